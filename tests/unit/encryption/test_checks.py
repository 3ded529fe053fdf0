from apps.encryption.checks import pbkdf_cost


def test_production_refuses_a_lowered_pbkdf_cost(settings):
    settings.ENCRYPTION_ALLOW_WEAK_PBKDF = False
    assert {e.id for e in pbkdf_cost(None)} == {"encryption.E001", "encryption.E002"}  # the test settings' values
    settings.ENCRYPTION_PBKDF_MEMORY_KIB = 1048576
    settings.ENCRYPTION_PBKDF_FORCE_ITERATIONS = 0
    settings.ENCRYPTION_KDF_MEMORY_KIB = 65536
    settings.ENCRYPTION_KDF_ITERATIONS = 3
    assert pbkdf_cost(None) == []


def test_the_base_settings_are_safe():
    import importlib

    base = importlib.import_module("hypervisor_web.settings.base")
    assert base.ENCRYPTION_PBKDF_MEMORY_KIB >= 262144 and base.ENCRYPTION_PBKDF_FORCE_ITERATIONS == 0
    assert base.ENCRYPTION_KDF_MEMORY_KIB >= 65536 and base.ENCRYPTION_KDF_ITERATIONS >= 3
    assert not getattr(base, "ENCRYPTION_ALLOW_WEAK_PBKDF", False)
