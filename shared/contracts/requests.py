"""The bodies a caller sends: a batch of scenes and a re-roll, with the limits
they are validated against (taken from the settings, passed as context)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from shared.domain import briefs
from shared.domain.anchors import ANCHOR_FORMS, is_anchor, parse_anchor
from shared.domain.job import Lane

SCENE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


NOT_THIS_CALLERS_SHEET = (
    "is not among the spreadsheets this caller may write "
    "(ALLOWED_SPREADSHEET_IDS, CALLER_SPREADSHEETS)"
)


# The row's columns kept on its job: enough for any sheet's names and notes.
FIELDS_MAX_CHARS = 20_000


class FieldProblem(ValueError):
    """A check across fields that names the field it is about (relative to the
    model it is raised in), so a 422 can name it too."""

    def __init__(self, path: tuple[str | int, ...], reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


class ModelShape(BaseModel):
    """What one model accepts: its shapes and how many references of each kind."""

    aspect_ratios: tuple[str, ...] = ()
    image_sizes: tuple[str, ...] = ()
    max_references: int = 14
    # Google's split where it counts kinds apart (None: only the total binds).
    max_characters: int | None = None
    max_objects: int | None = None


class Limits(BaseModel):
    """Request limits, taken from settings and passed as validation context."""

    max_items: int = 500
    max_variants: int = 4
    max_prompt_chars: int = 4000
    images_bucket: str = ""
    # gs:// references must lie under it ("" allows none; None, any object: tests).
    references_prefix: str | None = None
    allowed_spreadsheet_ids: tuple[str, ...] = ("*",)
    # The catalog's models, and the shapes the batch's model accepts (empty: any).
    models: tuple[str, ...] = ()
    aspect_ratios: tuple[str, ...] = ()
    image_sizes: tuple[str, ...] = ()
    # The economy lane needs Gemini's Batch API (the Gemini API backend).
    economy_lane: bool = True
    # The batch's model takes at most this many reference images in all.
    max_references: int = 14
    max_characters: int | None = None
    max_objects: int | None = None
    # Every catalog model's shape, for rows that name their own model.
    shapes: dict[str, ModelShape] = Field(default_factory=dict)

    def shape(self, model: str | None) -> ModelShape:
        """The shape of a row's model (None, or one not in the catalog: the batch's)."""
        if model is not None and model in self.shapes:
            return self.shapes[model]
        return ModelShape(
            aspect_ratios=self.aspect_ratios,
            image_sizes=self.image_sizes,
            max_references=self.max_references,
            max_characters=self.max_characters,
            max_objects=self.max_objects,
        )


def _lane(value: Lane | None, info: ValidationInfo) -> Lane | None:
    if value == "economy" and not _limits(info).economy_lane:
        raise ValueError(
            "economy needs Gemini's Batch API, which this deployment's backend "
            "(GEMINI_BACKEND=vertex) does not offer; use live"
        )
    return value


def _known(model: str | None, info: ValidationInfo) -> str | None:
    models = _limits(info).models
    if model is not None and models and model not in models:
        raise ValueError(f"is not in the model catalog; one of {', '.join(models)}")
    return model


def _limits(info: ValidationInfo) -> Limits:
    context = info.context or {}
    limits = context.get("limits")
    return limits if isinstance(limits, Limits) else Limits()


class BatchItem(BaseModel):
    """One scene row of the sheet: a prompt, or a template composed with the row's
    columns (the composition is the prompt that is stored and sent)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    scene_id: str = Field(json_schema_extra={"pattern": SCENE_ID_PATTERN.pattern})
    # Declared before the fields checked against it (validators see earlier fields).
    model: str | None = Field(
        default=None, max_length=100, description="This scene's model; default the batch's"
    )
    fields: dict[str, Annotated[str, Field(max_length=4000)]] = Field(
        default_factory=dict,
        max_length=100,
        description="The row's columns by header, for the template's {column} placeholders",
    )
    avoid: str | None = Field(
        default=None,
        max_length=1000,
        description="What to leave out of the image (items separated by commas, "
        "semicolons or lines); added to the prompt in the model's wording",
    )
    template: briefs.Template | None = Field(
        default=None,
        description="A prompt template with {column} placeholders filled from ``fields`` "
        "({{ and }} for literal braces); instead of ``prompt``",
    )
    prompt: str | None = Field(
        default=None,
        min_length=1,
        description="At most MAX_PROMPT_CHARS characters (with ``avoid``'s wording); "
        "required unless ``template`` is given",
    )
    ref_pack_public_url: str | None = Field(
        default=None,
        max_length=2048,
        description="An https:// URL, a gs:// object of the images bucket, or an earlier "
        "output: scene:<scene_id>#<variant> or job:<job_id>#<variant>",
    )
    references: list[briefs.RoleReference] = Field(
        default_factory=list,
        max_length=100,
        description="Characters, products and a style by name, sent labelled before the "
        "pack's images; within the model's limits per kind (GET /limits)",
    )
    variants: int = Field(ge=1, description="1 to MAX_VARIANTS (default 4)")
    lane: Lane | None = Field(default=None, description="This scene's lane; default the batch's")
    # What the scene's model accepts is in its catalog entry (GET /models).
    aspect_ratio: str | None = Field(
        default=None, max_length=10, description="One of the model's aspect ratios, e.g. 16:9"
    )
    image_size: str | None = Field(
        default=None, max_length=10, description="One of the model's sizes, e.g. 1K, 2K, 4K"
    )

    _text: str = PrivateAttr(default="")

    @field_validator("scene_id")
    @classmethod
    def _scene_id(cls, value: str) -> str:
        if not SCENE_ID_PATTERN.fullmatch(value):
            raise ValueError(
                "must be 1-64 characters: letters, digits, '_', '-' or '.', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _known(value, info)

    @field_validator("fields")
    @classmethod
    def _fields(cls, value: dict[str, str]) -> dict[str, str]:
        # Kept on the job (file names of a delivery use them): bounded in all.
        size = sum(len(k) + len(v) for k, v in value.items())
        if size > FIELDS_MAX_CHARS:
            raise ValueError(
                f"hold {size} characters in all; the limit is {FIELDS_MAX_CHARS} "
                "(leave long columns out)"
            )
        return value

    @field_validator("template")
    @classmethod
    def _template(
        cls, value: briefs.Template | None, info: ValidationInfo
    ) -> briefs.Template | None:
        if value is not None:
            try:
                briefs.compose(value.text, info.data.get("fields") or {})
            except briefs.TemplateError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | None, info: ValidationInfo) -> str | None:
        limit = _limits(info).max_prompt_chars
        if value is not None and len(value) > limit:
            raise ValueError(f"is {len(value)} characters long; the limit is {limit}")
        return value

    @field_validator("variants")
    @classmethod
    def _variants(cls, value: int, info: ValidationInfo) -> int:
        limit = _limits(info).max_variants
        if value > limit:
            raise ValueError(f"must be between 1 and {limit}")
        return value

    _item_lane = field_validator("lane")(_lane)

    @field_validator("aspect_ratio", "image_size")
    @classmethod
    def _shape(cls, value: str | None, info: ValidationInfo) -> str | None:
        shape = _limits(info).shape(info.data.get("model"))
        accepted = shape.aspect_ratios if info.field_name == "aspect_ratio" else shape.image_sizes
        if value is not None and accepted and value not in accepted:
            model = info.data.get("model")
            whose = f"{model}'s" if model else "model's"
            raise ValueError(f"must be one of the {whose} {', '.join(accepted)}")
        return value

    @field_validator("ref_pack_public_url")
    @classmethod
    def _ref_url(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return None
        limits = _limits(info)
        return check_reference(value, limits.images_bucket, limits.references_prefix)

    @field_validator("references")
    @classmethod
    def _references(
        cls, value: list[briefs.RoleReference], info: ValidationInfo
    ) -> list[briefs.RoleReference]:
        limits = _limits(info)
        for ref in value:
            try:
                ref.ref = check_reference(ref.ref, limits.images_bucket, limits.references_prefix)
            except ValueError as exc:
                raise ValueError(f"{ref.role} {ref.name!r}: {exc}") from None
        shape = limits.shape(info.data.get("model"))
        kinds = briefs.counts_by_kind(value)
        for kind, most in (("characters", shape.max_characters), ("objects", shape.max_objects)):
            if most is not None and kinds[kind] > most:
                what = "characters" if kind == "characters" else "products and style images"
                raise ValueError(f"has {kinds[kind]} {what}; the model takes at most {most}")
        return value

    @model_validator(mode="after")
    def _compose(self, info: ValidationInfo) -> BatchItem:
        """The prompt that is stored and sent: the template's composition (or the
        prompt given) and what to avoid, within the prompt limit."""
        if self.template is not None and self.prompt is not None:
            raise FieldProblem(("prompt",), "give a prompt or a template, not both")
        if self.template is not None:
            composed = briefs.compose(self.template.text, self.fields)
        elif self.prompt is not None:
            composed = self.prompt
        else:
            raise FieldProblem(("prompt",), "is required (or a template with the row's columns)")
        prompt = briefs.with_avoid(composed, self.avoid)
        limit = _limits(info).max_prompt_chars
        if len(prompt) > limit:
            field = "template" if self.template is not None else "avoid"
            raise FieldProblem(
                (field,),
                f"the composed prompt is {len(prompt)} characters long; the limit is {limit}",
            )
        self._text = prompt
        return self

    @property
    def text(self) -> str:
        """The prompt that is stored and sent: the template's composition (or the
        prompt given) with what to avoid."""
        return self._text


def _style_ref(value: str, info: ValidationInfo) -> str:
    limits = _limits(info)
    return check_reference(value.strip(), limits.images_bucket, limits.references_prefix)


def check_reference(value: str, bucket: str, prefix: str | None = None) -> str:
    """A reference as a request may name it, or ValueError saying what it may be.

    A gs:// object must lie under ``prefix`` (REFERENCES_PREFIX; "" allows none,
    None any object of the bucket): the rest of the bucket is other callers' images,
    which only an anchor may name (and only the caller's own).
    """
    if is_anchor(value):
        if parse_anchor(value) is None:
            raise ValueError(f"must look like {ANCHOR_FORMS}")
        return value
    if value.startswith("https://") and len(value) > len("https://"):
        return value
    readable = f"gs://{bucket}/{prefix}" if prefix is not None else f"gs://{bucket}/"
    if bucket and prefix != "" and value.startswith(readable) and len(value) > len(readable):
        return value
    gcs = bucket and prefix != ""
    allowed = "an https:// URL" + (f", a {readable} object" if gcs else "")
    raise ValueError(f"must be {allowed} or an earlier output ({ANCHOR_FORMS})")


class BatchRequest(BaseModel):
    """Body of ``POST /batch/images``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    items: list[BatchItem] = Field(min_length=1)
    run_mode: Literal["dry_run", "live"] = Field(default="dry_run", alias="runMode")
    model: str | None = Field(
        default=None, max_length=100, description="An image model of the catalog (GET /models)"
    )
    lane: Lane = Field(
        default="live",
        description="live: now; economy: Gemini's Batch API at half price, within 24 hours",
    )
    spreadsheet_id: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_-]+$")
    worksheet: str = Field(min_length=1, max_length=100)
    drafts: bool = Field(
        default=False,
        description="Make every image as a draft, at the catalog's cheapest model and size "
        "for the job; promote the picks to the batch's model and size "
        "(POST /jobs/{job_id}/variants/{n}:promote)",
    )
    style_refs: list[Annotated[str, AfterValidator(_style_ref)]] = Field(
        default_factory=list,
        description="References applied to every item, before each item's own pack: "
        "https:// URLs, gs:// objects of the images bucket, scene:<scene_id>#<variant> or "
        "job:<job_id>#<variant>; at most the model's reference limit",
    )

    @field_validator("style_refs")
    @classmethod
    def _style_refs(cls, value: list[str], info: ValidationInfo) -> list[str]:
        limits = _limits(info)
        if len(value) > limits.max_references:
            raise ValueError(
                f"has {len(value)} references; the model takes at most {limits.max_references}"
            )
        return value

    @field_validator("spreadsheet_id")
    @classmethod
    def _allowed_sheet(cls, value: str, info: ValidationInfo) -> str:
        allowed = _limits(info).allowed_spreadsheet_ids
        if "*" not in allowed and value not in allowed:
            raise ValueError(NOT_THIS_CALLERS_SHEET)
        return value

    _batch_lane = field_validator("lane")(_lane)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str | None, info: ValidationInfo) -> str | None:
        return _known(value, info)

    @field_validator("items")
    @classmethod
    def _count(cls, value: list[BatchItem], info: ValidationInfo) -> list[BatchItem]:
        limit = _limits(info).max_items
        if len(value) > limit:
            raise ValueError(f"has {len(value)} items; the limit is {limit}")
        return value

    @model_validator(mode="after")
    def _unique_scenes(self, info: ValidationInfo) -> BatchRequest:
        seen: set[str] = set()
        for item in self.items:
            if item.scene_id in seen:
                raise ValueError(f"scene_id {item.scene_id!r} appears more than once")
            seen.add(item.scene_id)
        limits = _limits(info)
        for i, item in enumerate(self.items):
            # Known counts only: a pack's images are counted when it is read.
            named = len(self.style_refs) + len(item.references) + bool(item.ref_pack_public_url)
            shape = limits.shape(item.model or self.model)
            objects = briefs.counts_by_kind(item.references)["objects"] + len(self.style_refs)
            if shape.max_objects is not None and objects > shape.max_objects:
                raise FieldProblem(
                    ("items", i, "references"),
                    f"with the batch's {len(self.style_refs)} style references, the row names "
                    f"{objects} products and style images; the model takes at most "
                    f"{shape.max_objects}",
                )
            most = shape.max_references
            if named > most:
                raise FieldProblem(
                    ("items", i, "references"),
                    f"with the batch's {len(self.style_refs)} style references and its own "
                    f"pack, the row names {named} references; the model takes at most {most}",
                )
        return self


class RerollRequest(BaseModel):
    """Body of ``POST /jobs/{job_id}/variants/{n}:reroll`` (may be empty)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    instruction: str | None = Field(
        default=None,
        description="An edit of the current image (at most MAX_PROMPT_CHARS characters); "
        "none: a fresh generation of the variant with a new seed",
    )

    @field_validator("instruction")
    @classmethod
    def _instruction(cls, value: str | None, info: ValidationInfo) -> str | None:
        if not value:
            return None
        limit = _limits(info).max_prompt_chars
        if len(value) > limit:
            raise ValueError(f"is {len(value)} characters long; the limit is {limit}")
        return value


class ReviewRequest(BaseModel):
    """Body of ``POST /jobs/{job_id}/variants/{n}:review``."""

    model_config = ConfigDict(extra="forbid")

    decision: Literal["approved", "rejected", "none"] = Field(
        description="none clears the decision (rejecting the final pick clears the pick)"
    )
    version: int | None = Field(
        default=None,
        ge=1,
        description="The version decided on (default: the one the sheet shows now); name it "
        "when a newer version may be on its way",
    )


class FinalRequest(BaseModel):
    """Body of ``POST /jobs/{job_id}:final``: the scene's final pick (approved too)."""

    model_config = ConfigDict(extra="forbid")

    variant: int | None = Field(ge=1, description="None clears the pick")
    version: int | None = Field(default=None, ge=1, description="Default: the one shown now")


class PromoteRequest(BaseModel):
    """Body of ``POST /jobs/{job_id}/variants/{n}:promote``."""

    model_config = ConfigDict(extra="forbid")

    image_size: str = Field(
        max_length=10, description="A larger size the model makes (2K, 4K), e.g. 2K"
    )
    version: int | None = Field(
        default=None, ge=1, description="The version to promote (default: the one shown now)"
    )


NAME_TEMPLATE_FIELDS = ("scene_id", "variant", "version", "job_id", "model", "image_size")


class ExportRequest(BaseModel):
    """Body of ``POST /batches/{batch_id}:export`` (may be empty: a zip of everything)."""

    model_config = ConfigDict(extra="forbid")

    only: Literal["all", "approved", "final"] = Field(
        default="all",
        description="approved: approved images (a final pick is approved); final: each "
        "scene's final pick; rejected and unreviewed images are in neither",
    )
    name_template: str | None = Field(
        default=None,
        max_length=200,
        description="File names: {scene_id}, {variant}, {version}, {job_id}, {model}, "
        "{image_size} and the row's columns ({{ }} for braces); the extension is added",
    )
    destination: Literal["zip", "drive"] = "zip"
    drive_folder_id: str | None = Field(
        default=None,
        max_length=200,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The Drive folder to deliver into (shared with the service account)",
    )

    @field_validator("name_template")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            briefs.placeholders(value)
        except briefs.TemplateError as exc:
            raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _folder(self) -> ExportRequest:
        if self.destination == "drive" and not self.drive_folder_id:
            raise FieldProblem(("drive_folder_id",), "is required to deliver to Drive")
        return self
