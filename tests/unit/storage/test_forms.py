"""The storage pages' forms: numbers parsed into typed values with messages for people;
a version that is not a plain whole number is refused (it skipped the lock, or was a 500)."""

from decimal import Decimal

import pytest

from apps.storage.forms import DefaultsForm, ExpandForm, PoolLimitForm, QuotaForm


@pytest.mark.parametrize("version", ["\u00b2", "\u0663", "1x", "-1", "1.5", "", " "])
def test_a_malformed_or_missing_version_is_an_error(version):
    form = QuotaForm({"limit_gib": "5", "version": version})
    assert not form.is_valid()
    assert list(form.errors) == ["version"]
    assert "reload the page" in form.errors["version"][0]


def test_a_quota_form_gives_typed_values():
    form = QuotaForm({"limit_gib": " 2.5 ", "alert_percent": "70", "breach_action": "", "version": "3"})
    assert form.is_valid(), form.errors
    assert form.cleaned_data == {
        "limit_gib": Decimal("2.5"),
        "alert_percent": 70,
        "breach_action": "",
        "confirm": False,
        "version": 3,
    }
    assert QuotaForm({"version": "0", "confirm": "yes"}).is_valid()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("limit_gib", "\u00b2", "not a number of GiB"),
        ("limit_gib", "0", "more than 0"),
        ("limit_gib", "1e30", "larger than"),
        ("alert_percent", "\u00b2", "whole percentage"),
        ("alert_percent", "101", "from 1 to 100"),
        ("breach_action", "explode", "Select a valid choice"),
    ],
)
def test_bad_numbers_get_the_services_messages(field, value, message):
    form = QuotaForm({field: value, "version": "1"})
    assert not form.is_valid()
    assert message in form.errors[field][0]


def test_the_defaults_form_parses_every_number():
    data = {
        "quota_gib": "50",
        "alert_percent": "85",
        "breach_action": "refuse",
        "max_overcommit": "2.5",
        "reserve_percent": "0",
        "version": "1",
    }
    form = DefaultsForm(data)
    assert form.is_valid(), form.errors
    assert (form.cleaned_data["max_overcommit"], form.cleaned_data["reserve_percent"]) == (Decimal("2.5"), 0)
    for field in ("quota_gib", "alert_percent", "max_overcommit", "reserve_percent", "version"):
        assert not DefaultsForm({**data, field: "\u00b2"}).is_valid()
    assert list(DefaultsForm({**data, "version": ""}).errors) == ["version"]


def test_expand_takes_a_new_total_or_an_increase_not_both():
    assert ExpandForm({"to_gib": "100"}).is_valid()
    assert ExpandForm({"by_gib": "5"}).is_valid()
    for data in ({}, {"to_gib": "100", "by_gib": "5"}):
        form = ExpandForm(data)
        assert not form.is_valid() and "not both" in form.non_field_errors()[0]


def test_pool_limits_may_be_left_to_the_defaults():
    form = PoolLimitForm({"max_overcommit": "", "reserve_percent": ""})
    assert form.is_valid() and form.cleaned_data == {"max_overcommit": None, "reserve_percent": None}
    assert not PoolLimitForm({"max_overcommit": "0.5"}).is_valid()
