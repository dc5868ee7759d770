"""Request validation (shared/domain/job.py) with limits passed as validation context."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from pydantic import ValidationError

from shared.contracts.requests import NOT_THIS_CALLERS_SHEET, BatchRequest, Limits
from shared.domain.catalog import load_catalog
from shared.domain.job import Job, Variant, VariantState, money
from tests.fakes import make_job

LIMITS = Limits(max_items=3, max_variants=4, max_prompt_chars=50, images_bucket="imgs")

ANCHORS = "scene:<scene_id>#<variant> or job:<job_id>#<variant>"


def item(**overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"scene_id": "sc-001", "prompt": "a fox", "variants": 2}
    values.update(overrides)
    return values


def payload(*items: dict[str, Any], **overrides: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "items": list(items) or [item()],
        "runMode": "live",
        "spreadsheet_id": "sheet_1-A",
        "worksheet": "Scenes",
    }
    values.update(overrides)
    return values


def validate(data: dict[str, Any], limits: Limits = LIMITS) -> BatchRequest:
    return BatchRequest.model_validate(data, context={"limits": limits})


def errors_of(data: dict[str, Any], limits: Limits = LIMITS) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as info:
        validate(data, limits)
    return [(tuple(e["loc"]), str(e["msg"])) for e in info.value.errors()]


def test_valid_request() -> None:
    request = validate(payload(item(), item(scene_id="sc-002", variants=4)))
    assert request.run_mode == "live"
    assert [i.scene_id for i in request.items] == ["sc-001", "sc-002"]
    assert request.items[1].variants == 4
    assert request.items[0].ref_pack_public_url is None


def test_run_mode_defaults_to_dry_run() -> None:
    data = payload()
    del data["runMode"]
    assert validate(data).run_mode == "dry_run"


def test_run_mode_accepts_field_name_and_rejects_other_values() -> None:
    data = payload()
    del data["runMode"]
    assert validate({**data, "run_mode": "live"}).run_mode == "live"
    assert errors_of(payload(runMode="maybe"))[0][0] == ("runMode",)


@pytest.mark.parametrize("scene_id", ["a", "sc-001", "A.b_c-9", "9" * 64, "  padded  "])
def test_scene_id_accepted(scene_id: str) -> None:
    assert validate(payload(item(scene_id=scene_id))).items[0].scene_id == scene_id.strip()


@pytest.mark.parametrize(
    "scene_id", ["", "-leading", ".dot", "_under", "a b", "a/b", "é", "x" * 65, "a\nb"]
)
def test_scene_id_refused(scene_id: str) -> None:
    errors = errors_of(payload(item(scene_id=scene_id)))
    assert [loc for loc, _ in errors] == [("items", 0, "scene_id")]
    assert "1-64 characters" in errors[0][1]


def test_duplicate_scene_ids_refused() -> None:
    errors = errors_of(payload(item(scene_id="a"), item(scene_id="b"), item(scene_id="a")))
    assert len(errors) == 1
    loc, msg = errors[0]
    assert loc == ()
    assert "'a' appears more than once" in msg


@pytest.mark.parametrize("variants", [1, 4])
def test_variants_within_limit(variants: int) -> None:
    assert validate(payload(item(variants=variants))).items[0].variants == variants


@pytest.mark.parametrize("variants", [0, -1])
def test_variants_below_one_refused(variants: int) -> None:
    assert [loc for loc, _ in errors_of(payload(item(variants=variants)))] == [
        ("items", 0, "variants")
    ]


def test_variants_above_limit_refused_and_limit_comes_from_context() -> None:
    errors = errors_of(payload(item(variants=5)))
    assert errors == [(("items", 0, "variants"), "Value error, must be between 1 and 4")]
    # The same item is fine under a larger limit.
    assert validate(payload(item(variants=5)), Limits(max_variants=8)).items[0].variants == 5
    errors = errors_of(payload(item(variants=3)), Limits(max_variants=2))
    assert errors == [(("items", 0, "variants"), "Value error, must be between 1 and 2")]


def test_prompt_length_limit() -> None:
    assert validate(payload(item(prompt="x" * 50))).items[0].prompt == "x" * 50
    errors = errors_of(payload(item(prompt="x" * 51)))
    assert errors == [
        (("items", 0, "prompt"), "Value error, is 51 characters long; the limit is 50")
    ]


def test_empty_prompt_refused() -> None:
    assert [loc for loc, _ in errors_of(payload(item(prompt="   ")))] == [("items", 0, "prompt")]


@pytest.mark.parametrize(
    "url",
    ["https://example.com/pack.zip", "gs://imgs/refs/pack.zip", "gs://imgs/a"],
)
def test_ref_url_accepted(url: str) -> None:
    assert validate(payload(item(ref_pack_public_url=url))).items[0].ref_pack_public_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/pack.zip",
        "https://",
        "gs://other-bucket/refs/pack.zip",
        "gs://imgs-other/refs/pack.zip",
        "gs://imgs/",
        "ftp://example.com/x",
        "file:///etc/passwd",
    ],
)
def test_ref_url_refused(url: str) -> None:
    errors = errors_of(payload(item(ref_pack_public_url=url)))
    assert errors == [
        (
            ("items", 0, "ref_pack_public_url"),
            "Value error, must be an https:// URL, a gs://imgs/ object or an earlier output "
            f"({ANCHORS})",
        )
    ]


def test_gs_ref_url_refused_without_images_bucket() -> None:
    errors = errors_of(payload(item(ref_pack_public_url="gs://imgs/a")), Limits())
    assert errors == [
        (
            ("items", 0, "ref_pack_public_url"),
            f"Value error, must be an https:// URL or an earlier output ({ANCHORS})",
        )
    ]


@pytest.mark.parametrize("url", ["", "   ", None])
def test_empty_ref_url_becomes_none(url: str | None) -> None:
    assert validate(payload(item(ref_pack_public_url=url))).items[0].ref_pack_public_url is None


def test_items_count_limit() -> None:
    three = [item(scene_id=f"s{i}") for i in range(3)]
    assert len(validate(payload(*three)).items) == 3
    errors = errors_of(payload(*three, item(scene_id="s3")))
    assert errors == [(("items",), "Value error, has 4 items; the limit is 3")]


def test_empty_items_refused() -> None:
    assert [loc for loc, _ in errors_of(payload(items=[]))] == [("items",)]


def test_unknown_fields_refused_at_both_levels() -> None:
    errors = errors_of(payload(item(colour="red"), extra_top=1))
    locs = sorted(loc for loc, _ in errors)
    assert locs == [("extra_top",), ("items", 0, "colour")]
    assert all("Extra inputs are not permitted" in msg for _, msg in errors)


@pytest.mark.parametrize(
    ("field", "value"),
    [("spreadsheet_id", ""), ("spreadsheet_id", "has space"), ("worksheet", "")],
)
def test_sheet_fields_validated(field: str, value: str) -> None:
    assert [loc for loc, _ in errors_of(payload(**{field: value}))] == [(field,)]


def test_all_item_errors_reported_together() -> None:
    errors = errors_of(payload(item(variants=9), item(scene_id="bad id")))
    assert sorted(loc for loc, _ in errors) == [("items", 0, "variants"), ("items", 1, "scene_id")]


def test_without_context_default_limits_apply() -> None:
    data = payload(*[item(scene_id=f"s{i}") for i in range(5)])
    assert len(BatchRequest.model_validate(data).items) == 5


# --------------------------------------------------------------------------- records


def test_job_fills_missing_variants_and_round_trips() -> None:
    job = make_job(variant_count=3, variants={"2": Variant(n=2, state=VariantState.DONE)})
    assert sorted(job.variants) == ["1", "2", "3"]
    assert job.variant(2).state == VariantState.DONE
    assert job.counts() == {"pending": 2, "done": 1}
    assert Job.from_doc(job.to_doc()) == job


@pytest.mark.parametrize(
    ("value", "text"),
    [(Decimal("0.067") * 25, "1.6750"), (Decimal("0.039"), "0.0390"), (Decimal(0), "0.0000")],
)
def test_money_is_fixed_point(value: Decimal, text: str) -> None:
    assert money(value) == text


# --------------------------------------------------------------------------- newer fields


def test_spreadsheet_allowlist_from_limits() -> None:
    limits = Limits(allowed_spreadsheet_ids=("sheet_1-A", "other"))
    assert validate(payload(), limits).spreadsheet_id == "sheet_1-A"
    errors = errors_of(payload(spreadsheet_id="not_listed"), limits)
    assert errors == [
        (
            ("spreadsheet_id",),
            f"Value error, {NOT_THIS_CALLERS_SHEET}",
        )
    ]


def test_empty_allowlist_refuses_every_spreadsheet() -> None:
    assert [loc for loc, _ in errors_of(payload(), Limits(allowed_spreadsheet_ids=()))] == [
        ("spreadsheet_id",)
    ]


def test_wildcard_allowlist_accepts_any_spreadsheet() -> None:
    limits = Limits(allowed_spreadsheet_ids=("*",))
    assert validate(payload(spreadsheet_id="anything"), limits).spreadsheet_id == "anything"


def model_limits(model: str) -> Limits:
    entry = load_catalog().models[model]
    return LIMITS.model_copy(
        update={
            "models": tuple(load_catalog().models),
            "aspect_ratios": entry.aspect_ratios,
            "image_sizes": entry.image_sizes,
        }
    )


def test_aspect_ratio_and_image_size_are_the_models() -> None:
    flash = model_limits("gemini-3.1-flash-image")
    parsed = validate(payload(item(aspect_ratio="1:8", image_size="512")), flash).items[0]
    assert (parsed.aspect_ratio, parsed.image_size) == ("1:8", "512")
    assert validate(payload(), flash).items[0].aspect_ratio is None
    errors = errors_of(payload(item(aspect_ratio="7:5", image_size="8K")), flash)
    assert sorted(loc for loc, _ in errors) == [
        ("items", 0, "aspect_ratio"),
        ("items", 0, "image_size"),
    ]
    # The same shape is refused for a model that does not make it.
    pro = model_limits("gemini-3-pro-image")
    errors = errors_of(payload(item(aspect_ratio="1:8", image_size="512")), pro)
    assert [msg for _, msg in errors] == [
        "Value error, must be one of the model's 1:1, 2:3, 3:2, 3:4, 4:3, 4:5, 5:4, 9:16, "
        "16:9, 21:9",
        "Value error, must be one of the model's 1K, 2K, 4K",
    ]


def test_the_batch_model_must_be_in_the_catalog() -> None:
    limits = model_limits("gemini-3.1-flash-image")
    assert validate(payload(model="gemini-3-pro-image"), limits).model == "gemini-3-pro-image"
    ((loc, msg),) = errors_of(payload(model="gemini-2.0-flash-exp"), limits)
    assert loc == ("model",)
    assert "is not in the model catalog" in msg


def test_ref_url_length_limit() -> None:
    ok = "https://example.com/" + "a" * (2048 - 20)
    assert validate(payload(item(ref_pack_public_url=ok))).items[0].ref_pack_public_url == ok
    too_long = ok + "a"
    assert [loc for loc, _ in errors_of(payload(item(ref_pack_public_url=too_long)))] == [
        ("items", 0, "ref_pack_public_url")
    ]


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        ("gs://images-bucket/refs/pack.zip", True),
        ("gs://images-bucket/images/sc-1/job_9/var_1.png", False),  # another caller's image
        ("gs://images-bucket/refs/", False),
        ("gs://other-bucket/refs/a.png", False),
        ("https://example.com/a.png", True),
    ],
)
def test_gs_references_only_under_the_references_prefix(url: str, ok: bool) -> None:
    limits = LIMITS.model_copy(
        update={"images_bucket": "images-bucket", "references_prefix": "refs/"}
    )
    if ok:
        assert validate(payload(item(ref_pack_public_url=url)), limits).items[0].ref_pack_public_url
    else:
        ((loc, msg),) = errors_of(payload(item(ref_pack_public_url=url)), limits)
        assert loc == ("items", 0, "ref_pack_public_url")
        assert "an https:// URL, a gs://images-bucket/refs/ object or an earlier output" in msg
