"""Briefs: templates composed with the row's columns, references with roles, per-row
settings; checked at intake, labelled in the Gemini call."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from functions.http_api import validation_details
from shared.contracts.messages import JobMessage
from shared.contracts.requests import BatchRequest, Limits, ModelShape
from shared.domain import briefs
from shared.domain.briefs import Label, RoleReference
from shared.services.generation import Generation
from shared.services.ports import ReferenceImage
from tests.fakes import (
    FakeImageGenerator,
    FakeJobStore,
    FakeReferenceLoader,
    make_job,
)

CASES = json.loads(Path("shared/domain/template_cases.json").read_text())
LITE, WIDE = "lite-model", "wide-model"
LIMITS = Limits(
    max_prompt_chars=200,
    images_bucket="imgs",
    models=(LITE, WIDE),
    aspect_ratios=("1:1",),
    image_sizes=("1K",),
    max_references=5,
    max_characters=2,
    max_objects=3,
    shapes={
        LITE: ModelShape(aspect_ratios=("1:1",), image_sizes=("1K",), max_references=5),
        WIDE: ModelShape(
            aspect_ratios=("1:1", "21:9"),
            image_sizes=("1K", "4K"),
            max_references=14,
            max_characters=4,
            max_objects=10,
        ),
    },
)


@pytest.mark.parametrize("case", CASES["cases"], ids=lambda c: c["name"])
def test_composition_cases_shared_with_the_sheet(case: dict[str, Any]) -> None:
    if "error" in case:
        with pytest.raises(briefs.TemplateError) as info:
            briefs.compose(case["template"], case["fields"])
        assert case["error"] in str(info.value)
        return
    composed = briefs.compose(case["template"], case["fields"])
    assert briefs.with_avoid(composed, case["avoid"]) == case["prompt"]


@pytest.mark.parametrize("case", CASES["labels"], ids=lambda c: c["name"])
def test_label_cases(case: dict[str, Any]) -> None:
    labels = [Label(**label) if label else None for label in case["labels"]]
    assert briefs.labelled(case["prompt"], labels) == case["text"]


def test_placeholders_are_listed_once_in_order() -> None:
    assert briefs.placeholders("{b} {{x}} {A} {b}") == ["b", "a"]


def body(*items: dict[str, Any], **batch: Any) -> dict[str, Any]:
    return {
        "items": list(items),
        "spreadsheet_id": "sheet1",
        "worksheet": "Scenes",
        "runMode": "dry_run",
        **batch,
    }


def item(**fields: Any) -> dict[str, Any]:
    return {"scene_id": "sc-1", "variants": 1, **fields}


def refused(data: dict[str, Any]) -> list[dict[str, str]]:
    with pytest.raises(ValidationError) as info:
        BatchRequest.model_validate(data, context={"limits": LIMITS})
    return validation_details(info.value)


def accepted(data: dict[str, Any]) -> BatchRequest:
    return BatchRequest.model_validate(data, context={"limits": LIMITS})


TEMPLATE = {"name": "product", "text": "A {subject} in {setting}"}


def test_a_template_is_composed_and_kept_with_the_prompt_sent() -> None:
    request = accepted(
        body(
            item(
                template=TEMPLATE,
                fields={"Subject": "flask", "Setting": "a kitchen", "notes": "x"},
                avoid="logos; text",
            )
        )
    )
    only = request.items[0]
    assert only.text == (
        "A flask in a kitchen\n\nLeave these out of the image entirely: logos, text."
    )
    assert only.template is not None and only.template.name == "product"
    assert only.prompt is None


def test_a_plain_prompt_gets_the_avoid_wording_too() -> None:
    assert accepted(body(item(prompt="A fox", avoid="snow"))).items[0].text == (
        "A fox\n\nLeave these out of the image entirely: snow."
    )


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        (
            {"template": TEMPLATE, "fields": {"subject": "flask"}},
            "items[0].template",
            "{setting} has no column 'setting'",
        ),
        ({"fields": {}}, "items[0].prompt", "is required (or a template with the row's columns)"),
        (
            {"prompt": "x", "template": TEMPLATE, "fields": {"subject": "a", "setting": "b"}},
            "items[0].prompt",
            "give a prompt or a template, not both",
        ),
        (
            {"template": {"name": "t", "text": "{a}"}, "fields": {"a": "x" * 201}},
            "items[0].template",
            "the composed prompt is 201 characters long; the limit is 200",
        ),
    ],
)
def test_template_problems_name_the_field(fields: dict[str, Any], field: str, reason: str) -> None:
    assert {"field": field, "reason": reason} in refused(body(item(**fields)))


def test_a_rows_own_model_decides_its_shapes() -> None:
    wide = accepted(body(item(prompt="p", model=WIDE, image_size="4K", aspect_ratio="21:9")))
    assert wide.items[0].model == WIDE
    problems = refused(body(item(prompt="p", image_size="4K")))
    assert problems == [{"field": "items[0].image_size", "reason": "must be one of the model's 1K"}]
    problems = refused(body(item(prompt="p", model=LITE, aspect_ratio="21:9")))
    assert problems == [
        {"field": "items[0].aspect_ratio", "reason": f"must be one of the {LITE}'s 1:1"}
    ]
    assert refused(body(item(prompt="p", model="nope")))[0]["field"] == "items[0].model"


def refs(role: str, *names: str) -> list[dict[str, str]]:
    return [{"role": role, "name": n, "ref": f"https://example.com/{n}.png"} for n in names]


def test_references_within_each_kind_of_the_rows_model() -> None:
    three = refs("character", "Mara", "Leo", "Ada")
    assert refused(body(item(prompt="p", references=three))) == [
        {"field": "items[0].references", "reason": "has 3 characters; the model takes at most 2"}
    ]
    # The wide model takes four characters.
    assert len(accepted(body(item(prompt="p", model=WIDE, references=three))).items[0].references)
    objects = refs("product", "a", "b") + refs("style", "house", "ink")
    assert refused(body(item(prompt="p", references=objects)))[0]["reason"] == (
        "has 4 products and style images; the model takes at most 3"
    )


def test_the_total_with_the_batchs_style_references_is_refused_by_row() -> None:
    style = [f"https://example.com/s{i}.png" for i in range(3)]
    data = body(
        item(prompt="p"),
        item(
            scene_id="sc-2",
            prompt="p",
            model=LITE,  # no count by kind: only the total binds
            references=refs("character", "Mara"),
            ref_pack_public_url="https://example.com/pack.zip",
        ),
        style_refs=style,
    )
    data["items"][1]["references"] += refs("product", "flask")
    assert refused(data) == [
        {
            "field": "items[1].references",
            "reason": "with the batch's 3 style references and its own pack, the row names 6 "
            "references; the model takes at most 5",
        }
    ]


def test_a_role_reference_is_checked_like_any_reference() -> None:
    bad = [{"role": "character", "name": "Mara", "ref": "http://example.com/m.png"}]
    reason = refused(body(item(prompt="p", references=bad)))[0]["reason"]
    assert reason.startswith("character 'Mara': must be an https:// URL")


# ------------------------------------------------------------------ in the Gemini call


def image(tag: str) -> ReferenceImage:
    return ReferenceImage(tag.encode(), "image/png")


def test_named_references_go_first_labelled_then_style_then_pack(
    make_generation: Callable[..., Generation],
    store: FakeJobStore,
    generator: FakeImageGenerator,
    references: FakeReferenceLoader,
) -> None:
    references.packs.update(
        {
            "https://r/mara1.png": [image("mara1")],
            "https://r/mara2.png": [image("mara2")],
            "https://r/flask.png": [image("flask")],
            "https://r/style.png": [image("style")],
            "https://r/pack.zip": [image("p1"), image("p2")],
        }
    )
    store.add(
        make_job(
            variant_count=1,
            prompt="Mara holds the flask",
            model="gemini-nano-banana-2.1",
            style_refs=["https://r/style.png"],
            ref_pack_public_url="https://r/pack.zip",
            references=[
                RoleReference(role="product", name="Flask", ref="https://r/flask.png"),
                RoleReference(role="character", name="Mara", ref="https://r/mara1.png"),
                RoleReference(role="character", name="Mara", ref="https://r/mara2.png"),
            ],
        )
    )
    make_generation().handle(JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001"))
    (call,) = generator.calls
    assert [r.data.decode() for r in call.references] == [
        "mara1",
        "mara2",
        "flask",
        "style",
        "p1",
        "p2",
    ]
    assert call.prompt == (
        "Images 1 to 2 show the character Mara.\n"
        "Image 3 is the product Flask.\n"
        "Image 4 is the style to follow.\n"
        f"{briefs.KEEP_WORDING}\n\nMara holds the flask"
    )


def test_characters_beyond_the_models_count_are_left_out(
    make_generation: Callable[..., Generation],
    store: FakeJobStore,
    generator: FakeImageGenerator,
    references: FakeReferenceLoader,
) -> None:
    references.packs["https://r/crowd.zip"] = [image(f"c{i}") for i in range(6)]
    store.add(
        make_job(
            variant_count=1,
            model="gemini-nano-banana-2.1",  # at most 4 characters
            references=[RoleReference(role="character", name="Crowd", ref="https://r/crowd.zip")],
        )
    )
    make_generation().handle(JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001"))
    (call,) = generator.calls
    assert [r.data.decode() for r in call.references] == ["c0", "c1", "c2", "c3"]
    assert call.prompt.startswith("Images 1 to 4 show the character Crowd.")


def test_a_job_without_named_references_is_sent_as_before(
    make_generation: Callable[..., Generation],
    store: FakeJobStore,
    generator: FakeImageGenerator,
    references: FakeReferenceLoader,
) -> None:
    references.packs["https://r/style.png"] = [image("style")]
    store.add(make_job(variant_count=1, prompt="plain", style_refs=["https://r/style.png"]))
    make_generation().handle(JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001"))
    assert generator.calls[0].prompt == "plain"


def test_the_batchs_style_images_count_among_the_objects_of_each_row() -> None:
    style = [f"https://example.com/s{i}.png" for i in range(2)]
    data = body(item(prompt="p", references=refs("product", "a", "b")), style_refs=style)
    assert refused(data) == [
        {
            "field": "items[0].references",
            "reason": "with the batch's 2 style references, the row names 4 products and style "
            "images; the model takes at most 3",
        }
    ]
    data["items"][0]["model"] = WIDE  # ten objects
    assert accepted(data).items[0].model == WIDE


def test_style_images_count_as_objects_in_the_call(
    make_generation: Callable[..., Generation],
    store: FakeJobStore,
    generator: FakeImageGenerator,
    references: FakeReferenceLoader,
) -> None:
    references.packs.update(
        {f"https://r/s{i}.png": [image(f"s{i}")] for i in range(10)}
        | {"https://r/can.png": [image("can")]}
    )
    store.add(
        make_job(
            variant_count=1,
            model="gemini-nano-banana-2.1",  # at most 10 objects
            style_refs=[f"https://r/s{i}.png" for i in range(10)],
            references=[RoleReference(role="product", name="Can", ref="https://r/can.png")],
        )
    )
    make_generation().handle(JobMessage(job_id="job_1", batch_id="bat_1", scene_id="sc-001"))
    (call,) = generator.calls
    assert [r.data.decode() for r in call.references] == ["can"] + [f"s{i}" for i in range(9)]
    assert call.prompt.startswith("Image 1 is the product Can.\nImages 2 to 10 show the style")


def test_the_rows_columns_are_bounded_in_all() -> None:
    fields = {f"c{i}": "x" * 3000 for i in range(7)}
    reason = refused(body(item(prompt="p", fields=fields)))[0]
    assert reason["field"] == "items[0].fields"
    assert reason["reason"].startswith("hold 21014 characters in all; the limit is 20000")
