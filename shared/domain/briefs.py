"""Briefs: a prompt composed from a template and the row's columns, what to leave
out, and the words that tell the model which reference image is what.

The sheet composes the same way (``apps_script/Briefs.gs``) to show the prompt and
refuse a bad row before sending; the server composes again from what it receives,
so what is stored and sent to Gemini is this module's composition. Both are held
to the cases of ``template_cases.json``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# {{ and }} stand for literal braces; {name} for a column; any other brace is an error.
_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")
_KEY_CHARS = re.compile(r"[^a-z0-9]+")

# What a reference is to the model. A style image counts among the objects where
# Google counts kinds apart (``max_object_references``), like a product.
Role = Literal["character", "product", "style"]
ROLES: tuple[Role, ...] = ("character", "product", "style")

AVOID_WORDING = "Leave these out of the image entirely: {items}."
KEEP_WORDING = (
    "Keep each named character and product exactly as its images show it "
    "(face, build, clothing, shape, colours, labels)."
)


class TemplateError(ValueError):
    """A template that cannot be composed with the row: the reason, in words."""


def column_key(header: str) -> str:
    """How a column is named in a placeholder: its header, lower case, with every run
    of other characters as one ``_`` ("Mood / tone" is ``{mood_tone}``)."""
    return _KEY_CHARS.sub("_", header.strip().lower()).strip("_")


def placeholders(template: str) -> list[str]:
    """The columns a template names, in order, each once; TemplateError for a stray
    brace or an empty placeholder."""
    names: list[str] = []
    for match in _TOKEN.finditer(template):
        name = _placeholder(match, template)
        if name is not None and name not in names:
            names.append(name)
    return names


def compose(template: str, fields: Mapping[str, str]) -> str:
    """The template with each ``{column}`` replaced by the row's value (inserted as it
    is: braces in a value are not placeholders). A column the row lacks, or leaves
    empty, is a TemplateError naming it."""
    values = {column_key(key): value.strip() for key, value in fields.items()}
    out: list[str] = []
    at = 0
    for match in _TOKEN.finditer(template):
        out.append(template[at : match.start()])
        at = match.end()
        name = _placeholder(match, template)
        if name is None:
            out.append(match.group(0)[0])
            continue
        if name not in values:
            raise TemplateError(f"{{{name}}} has no column {name!r}")
        if not values[name]:
            raise TemplateError(f"{{{name}}} names column {name!r}, which is empty in this row")
        out.append(values[name])
    out.append(template[at:])
    return "".join(out).strip()


def _placeholder(match: re.Match[str], template: str) -> str | None:
    """The column a token names; None for an escaped brace."""
    token = match.group(0)
    if token in ("{{", "}}"):
        return None
    if match.group(1) is None:
        raise TemplateError(
            f"has a lone {token!r} at character {match.start() + 1} "
            "(write {{ or }} for a brace itself)"
        )
    name = column_key(match.group(1))
    if not name:
        raise TemplateError(f"has an empty placeholder at character {match.start() + 1}")
    return name


def avoid_items(avoid: str | None) -> list[str]:
    """What to leave out, one item per comma, semicolon or line."""
    return [part.strip() for part in re.split(r"[,;\n]+", avoid or "") if part.strip()]


def with_avoid(prompt: str, avoid: str | None) -> str:
    """The prompt and, if the row has any, the model's wording of what to leave out."""
    items = avoid_items(avoid)
    if not items:
        return prompt
    return f"{prompt}\n\n{AVOID_WORDING.format(items=', '.join(items))}"


@dataclass(frozen=True)
class Label:
    """What one reference image is: a named character or product, or the style."""

    role: Role
    name: str = ""

    def words(self) -> str:
        if self.role == "style":
            return f"the style to follow ({self.name})" if self.name else "the style to follow"
        return f"the {self.role} {self.name}"


def labelled(prompt: str, labels: Sequence[Label | None]) -> str:
    """The prompt preceded by what each reference image is ("Image 1 is the character
    Mara."), consecutive images of one reference together; unlabelled images are
    left unnamed. No label at all: the prompt as it is."""
    if not any(labels):
        return prompt
    lines: list[str] = []
    start = 0
    while start < len(labels):
        end = start
        while end + 1 < len(labels) and labels[end + 1] == labels[start]:
            end += 1
        label = labels[start]
        if label is not None:
            if start == end:
                lines.append(f"Image {start + 1} is {label.words()}.")
            else:
                lines.append(f"Images {start + 1} to {end + 1} show {label.words()}.")
        start = end + 1
    if any(label is not None and label.role != "style" for label in labels):
        lines.append(KEEP_WORDING)
    return "\n".join([*lines, "", prompt])


class Template(BaseModel):
    """The template a prompt was composed from: its name in the sheet and its text."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=100)
    text: str = Field(min_length=1, max_length=20_000)


class RoleReference(BaseModel):
    """A reference the row names by role: a character, a product, or a style."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    role: Role
    name: str = Field(min_length=1, max_length=64)
    ref: str = Field(
        min_length=1,
        max_length=2048,
        description="An https:// URL, a gs:// object of the images bucket, or an earlier "
        "output (scene:<scene_id>#<variant> or job:<job_id>#<variant>)",
    )

    @property
    def label(self) -> Label:
        return Label(self.role, self.name)


def counts_by_kind(references: Sequence[RoleReference]) -> dict[str, int]:
    """References per kind as Google counts them: characters, and objects (products
    and style images)."""
    characters = sum(1 for r in references if r.role == "character")
    return {"characters": characters, "objects": len(references) - characters}
