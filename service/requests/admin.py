"""The operator's bodies: an experiment's variants, a change of the model record.
"""

from __future__ import annotations

from typing import Any

from service.core.feedback import MAX_VARIANTS, Variant
from service.core.parameters import PARAMETERS, Value
from service.requests.values import (
    finite_number,
    invalid,
    json_object,
    placement_name,
    type_name,
)
from service.settings import Settings

# --- experiments ----------------------------------------------------------------------------
EXPERIMENT_FIELDS = ("variants", "placement")
VARIANT_FIELDS = ("weight", "params")
MODEL_CHANGE_FIELDS = ("params", "pin")


def experiment_placement(body: Any, settings: Settings) -> str | None:
    """``PUT /admin/experiments/{name}``'s ``placement``: the one whose requests it scores
    (None: every request with a session id). ``experiment_variants`` checked the body."""
    raw = body.get("placement")
    return None if raw is None else placement_name(raw, "placement", settings)


def experiment_variants(body: Any, settings: Settings) -> tuple[Variant, ...]:
    """``PUT /admin/experiments/{name}``: the variants, in the order given (the first is what
    the report compares the others with)."""
    obj = json_object(body, "", EXPERIMENT_FIELDS)
    raw = obj.get("variants")
    if not isinstance(raw, dict) or not 2 <= len(raw) <= MAX_VARIANTS:
        raise invalid("variants", "variants must be an object of 2 to "
                                  f"{MAX_VARIANTS} variants by name, for example "
                                  '{"A": {"weight": 1, "params": {}}, "B": {"weight": 1, '
                                  '"params": {"position_decay": 1.0}}}.')
    variants = []
    for name, value in raw.items():
        where = f"variants.{name}"
        if not 0 < len(name) <= MAX_VARIANT_NAME:
            raise invalid(where, f"A variant's name must be 1 to {MAX_VARIANT_NAME} characters.")
        fields = json_object(value, where, VARIANT_FIELDS)
        weight = finite_number(fields.get("weight", 1), where + ".weight", low=0,
                               high=MAX_VARIANT_WEIGHT)
        if weight <= 0:
            raise invalid(where + ".weight", f"{where}.weight must be above 0.")
        values = param_values(fields.get("params", {}), where + ".params", settings)
        variants.append(Variant(name, weight, values))
    return tuple(variants)


MAX_VARIANT_NAME = 64
MAX_VARIANT_WEIGHT = 1e6


def param_values(raw: Any, field: str, settings: Settings) -> dict[str, Value]:
    """Model parameter values, each checked against its limits."""
    if not isinstance(raw, dict):
        raise invalid(field, f"{field} must be an object of parameter values, not "
                             f"{type_name(raw)}.")
    values: dict[str, Value] = {}
    for name, value in raw.items():
        limit = PARAMETERS.get(name)
        if limit is None:
            raise invalid(f"{field}.{name}", f"Unknown parameter {name!r}; the parameters are "
                                             f"{', '.join(PARAMETERS)}.")
        checked = limit.check(value)
        if isinstance(checked, str):
            raise invalid(f"{field}.{name}", f"{name} {checked} ({limit.meaning}).")
        if name == "index_cap" and checked > settings.index_cap:
            raise invalid(f"{field}.{name}",
                          f"index_cap must be at most {settings.index_cap}: the indexes hold "
                          "no more (raise --index-cap on the workers and serve first).")
        values[name] = checked
    return values


# --- the model record ---------------------------------------------------------------------------
def model_change(body: Any, settings: Settings) -> tuple[dict[str, Value], bool | None]:
    """``PUT /admin/model``: the parameter values to set, and whether to pin them (None: their
    pins unchanged)."""
    obj = json_object(body, "", MODEL_CHANGE_FIELDS)
    if "params" not in obj:
        raise invalid("params", 'params is required: an object of parameter values, for '
                                'example {"neighbours": 100}.')
    raw = obj["params"]
    if not isinstance(raw, dict) or not raw:
        raise invalid("params", "params must be an object naming at least one parameter, "
                                f"not {type_name(raw) if not isinstance(raw, dict) else '{}'}.")
    values = param_values(raw, "params", settings)
    pin = obj.get("pin")
    if pin is not None and not isinstance(pin, bool):
        raise invalid("pin", f"pin must be true or false, not {type_name(pin)}.")
    return values, pin
