from pathlib import Path

from apps.encryption.checks import kek_apart, pbkdf_cost


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


def test_a_kek_directory_inside_the_key_directory_is_refused_at_start_up(settings, tmp_path):
    settings.ENCRYPTION_KEY_DIR = tmp_path / "keys"
    settings.ENCRYPTION_KEK_FILE_DIR = tmp_path / "kek"
    assert kek_apart(None) == []
    settings.ENCRYPTION_KEK_FILE_DIR = tmp_path / "keys" / "kek"
    assert [e.id for e in kek_apart(None)] == ["encryption.E004"]


def test_the_default_kek_directory_lies_outside_the_state_and_key_directories():
    import importlib

    base = importlib.import_module("hypervisor_web.settings.base")
    test = importlib.import_module("hypervisor_web.settings.test")
    assert base.ENCRYPTION_KEK_FILE_DIR == Path("/etc/hypervisor-portal/kek")
    assert not base.ENCRYPTION_KEK_FILE_DIR.is_relative_to(base.VAR_DIR)
    assert not test.ENCRYPTION_KEK_FILE_DIR.is_relative_to(test.ENCRYPTION_KEY_DIR)


def test_the_tpm2_provider_on_a_host_without_a_tpm_is_refused_at_start_up(settings, tmp_path):
    settings.ENCRYPTION_KEK_PROVIDER = "tpm2"
    settings.ENCRYPTION_TPM2_TCTI = f"device:{tmp_path / 'tpmrm0'}"
    assert [e.id for e in kek_apart(None)] == ["encryption.E005"]
    (tmp_path / "tpmrm0").touch()
    assert kek_apart(None) == []
