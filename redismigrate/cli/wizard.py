"""The interactive wizard: builds a schema patch one question at a time.

It reads answers line by line from standard input, so a script can drive it by
piping them in. An impossible answer is refused with the reason and asked again.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console

from redismigrate.capabilities import ServerCapabilities
from redismigrate.errors import BadInputError
from redismigrate.limits import VECTOR_LIMITS, Limit, tag_separator_problem
from redismigrate.patch import (
    FieldRename,
    FieldUpdate,
    IndexChange,
    SchemaChanges,
    SchemaPatch,
    parse_field,
)
from redismigrate.schema import (
    DISTANCE_METRICS,
    IndexSchema,
    TagField,
    TextField,
    VectorField,
    default_json_path,
    type_name,
)

ADDABLE_TYPES = ("text", "tag", "numeric", "geo", "geoshape")
MENU = (
    "Add a field (text, tag, numeric, geo, geoshape)",
    "Update a field (sortable, weight, separator, vector settings)",
    "Remove a field (documents keep the data)",
    "Rename a field (in every document)",
    "Rename the index",
    "Change the key prefix (renames every key)",
    "Preview the patch as YAML",
    "Finish",
)


class WizardInputEnded(BadInputError):
    """Standard input ended before the user chose Finish."""


class Refused(Exception):
    """An answer that cannot be taken; the message says why."""


class Wizard:
    """Collects changes against ``schema`` on a server with ``capabilities``."""

    def __init__(
        self,
        schema: IndexSchema,
        capabilities: ServerCapabilities,
        existing_indexes: list[str],
        console: Console,
        stdin: TextIO | None = None,
    ) -> None:
        self.schema = schema
        self.caps = capabilities
        self.existing_indexes = existing_indexes
        self.console = console
        self.stdin = stdin or sys.stdin
        self.add: list[dict[str, Any]] = []
        self.remove: list[str] = []
        self.update: dict[str, dict[str, Any]] = {}
        self.rename: list[FieldRename] = []
        self.index = IndexChange()

    # ---------------------------------------------------------------- input
    def ask(self, prompt: str) -> str:
        self.console.print(f"{prompt} ", end="", markup=False, highlight=False)
        self.console.file.flush()
        line = self.stdin.readline()
        if not line:
            self.console.print()
            raise WizardInputEnded("input ended before 'Finish'; nothing was written")
        answer = line.rstrip("\r\n").strip()
        if not self.stdin.isatty():
            self.console.print(answer, markup=False, highlight=False)
        return answer

    def ask_until(self, prompt: str, check: Callable[[str], Any]) -> Any:
        """Ask until ``check`` accepts the answer; it raises Refused to refuse."""
        while True:
            answer = self.ask(prompt)
            try:
                return check(answer)
            except Refused as exc:
                self.console.print(f"  Refused: {exc}", markup=False, highlight=False)

    def ask_yes_no(self, prompt: str, current: bool) -> bool:
        def check(answer: str) -> bool:
            if not answer:
                return current
            if answer.lower() in ("y", "yes"):
                return True
            if answer.lower() in ("n", "no"):
                return False
            raise Refused("answer y or n (blank keeps the current value)")

        return bool(self.ask_until(f"{prompt} [{'Y/n' if current else 'y/N'}]:", check))

    # ---------------------------------------------------------------- state
    def current_fields(self) -> list[str]:
        renamed = {r.old_name: r.new_name for r in self.rename}
        names = [
            renamed.get(f.name, f.name) for f in self.schema.fields if f.name not in self.remove
        ]
        return names + [str(f["name"]) for f in self.add]

    def source_name(self, name: str) -> str:
        for rename in self.rename:
            if rename.new_name == name:
                return rename.old_name
        return name

    def patch(self) -> SchemaPatch:
        return SchemaPatch(
            source_index=self.schema.name,
            changes=SchemaChanges(
                add_fields=self.add,
                remove_fields=self.remove,
                update_fields=[FieldUpdate(name=n, attrs=a) for n, a in self.update.items() if a],
                rename_fields=self.rename,
                index=self.index,
            ),
        )

    # ---------------------------------------------------------------- flow
    def run(self) -> SchemaPatch:
        self.console.print(f"Building a migration for index {self.schema.name!r}")
        self.console.print(f"Storage: {self.schema.storage_type}; prefixes: {self.schema.prefixes}")
        for field in self.schema.fields:
            self.console.print(f"  - {field.name} ({type_name(field)})", markup=False)
        actions = {
            "1": self.add_field,
            "2": self.update_field,
            "3": self.remove_field,
            "4": self.rename_field,
            "5": self.rename_index,
            "6": self.change_prefix,
            "7": self.preview,
        }
        while True:
            self.console.print("Choose an action:")
            for number, label in enumerate(MENU, start=1):
                self.console.print(f"  {number}. {label}", markup=False)

            def check(answer: str) -> str:
                if answer == "8" or answer in actions:
                    return answer
                raise Refused("enter a number from 1 to 8")

            choice = self.ask_until("Enter a number:", check)
            if choice == "8":
                return self.patch()
            actions[choice]()

    def pick_field(self, prompt: str, allowed: list[str]) -> str:
        for number, name in enumerate(allowed, start=1):
            self.console.print(f"  {number}. {name}", markup=False)

        def check(answer: str) -> str:
            if answer.isdigit() and 1 <= int(answer) <= len(allowed):
                return allowed[int(answer) - 1]
            if answer in allowed:
                return answer
            raise Refused(f"no field {answer!r} here; enter a number or a listed name")

        return str(self.ask_until(prompt, check))

    def add_field(self) -> None:
        taken = set(self.current_fields())

        def check_name(answer: str) -> str:
            if not answer:
                raise Refused("a field needs a name")
            if answer in taken:
                raise Refused(f"a field named {answer!r} already exists")
            return answer

        name = self.ask_until("Field name:", check_name)

        def check_type(answer: str) -> str:
            if answer.lower() == "vector":
                raise Refused(
                    "a vector field needs a vector in every document; add the vectors first"
                )
            if answer.lower() not in ADDABLE_TYPES:
                raise Refused("type must be one of " + ", ".join(ADDABLE_TYPES))
            return answer.lower()

        kind = self.ask_until(f"Field type ({', '.join(ADDABLE_TYPES)}):", check_type)
        field: dict[str, Any] = {"name": name, "type": kind}
        if self.schema.storage_type == "json":
            path = self.ask(f"JSON path [{default_json_path(name)}]:")
            if path and path != default_json_path(name):
                field["path"] = path
        attrs: dict[str, Any] = {}
        if kind in ("text", "tag", "numeric", "geo") and self.ask_yes_no(
            "Sortable (sort and aggregate on it)", False
        ):
            attrs["sortable"] = True
        if kind == "text":
            weight = self.ask_until("Weight [1.0]:", _positive_float_or_blank)
            if weight is not None and weight != 1.0:
                attrs["weight"] = weight
            if self.ask_yes_no("Skip stemming (no_stem)", False):
                attrs["no_stem"] = True
        if kind == "tag":
            separator = self.ask_until("Separator [,]:", _separator_or_blank)
            if separator not in (None, ","):
                attrs["separator"] = separator
            if self.ask_yes_no("Case sensitive", False):
                attrs["case_sensitive"] = True
        if attrs:
            field["attrs"] = attrs
        parse_field(field, source="wizard", storage_type=self.schema.storage_type)
        self.add.append(field)

    def update_field(self) -> None:
        names = [n for n in self.current_fields() if n not in {f["name"] for f in self.add}]
        chosen = self.pick_field("Field to update (number or name):", names)
        original = self.schema.field(self.source_name(chosen))
        assert original is not None
        changes = self.update.setdefault(chosen, {})
        if isinstance(original, VectorField):
            self.update_vector(original, changes)
            return
        attrs = original.attrs
        sortable = getattr(attrs, "sortable", None)
        if sortable is not None:
            new = self.ask_yes_no("Sortable", bool(changes.get("sortable", sortable)))
            if new != sortable:
                changes["sortable"] = new
        if isinstance(original, TextField):
            weight = self.ask_until(
                f"Weight [current: {original.attrs.weight}]:", _positive_float_or_blank
            )
            if weight is not None and weight != original.attrs.weight:
                changes["weight"] = weight
            no_stem = self.ask_yes_no("Skip stemming (no_stem)", original.attrs.no_stem)
            if no_stem != original.attrs.no_stem:
                changes["no_stem"] = no_stem
        if isinstance(original, TagField):
            current = original.attrs.separator or ","
            separator = self.ask_until(
                f"Separator [current: {current}] (blank keeps it):", _separator_or_blank
            )
            if separator is not None and separator != current:
                changes["separator"] = separator

    def update_vector(self, field: VectorField, changes: dict[str, Any]) -> None:
        a = field.attrs
        self.console.print(f"Current vector settings of {field.name!r}:", markup=False)
        self.console.print(
            f"  algorithm: {a.algorithm}\n  datatype: {a.datatype}\n"
            f"  distance_metric: {a.distance_metric}\n  dims: {a.dims} (cannot change)",
            markup=False,
        )
        self.console.print("Leave an answer blank to keep the current value.")
        algorithms = self.caps.vector_algorithms

        def choice(options: list[str] | tuple[str, ...], what: str) -> Callable[[str], Any]:
            def check(answer: str) -> str | None:
                if not answer:
                    return None
                if answer.lower() in options:
                    return answer.lower()
                raise Refused(f"{what} must be one of {', '.join(options)} on this server")

            return check

        algorithm = self.ask_until(
            f"Algorithm ({', '.join(algorithms)}) [current: {a.algorithm}]:",
            choice(algorithms, "algorithm"),
        )
        datatypes = self.caps.vector_datatypes
        datatype = self.ask_until(
            f"Datatype ({', '.join(datatypes)}) [current: {a.datatype}]:",
            choice(datatypes, "datatype"),
        )
        metric = self.ask_until(
            f"Distance metric ({', '.join(DISTANCE_METRICS)}) [current: {a.distance_metric}]:",
            choice(DISTANCE_METRICS, "distance metric"),
        )
        for key, value, current in (
            ("algorithm", algorithm, a.algorithm),
            ("datatype", datatype, a.datatype),
            ("distance_metric", metric, a.distance_metric),
        ):
            if value is not None and value != current:
                changes[key] = value
        final_algorithm = changes.get("algorithm", a.algorithm)
        if final_algorithm == "svs-vamana" and changes.get("datatype", a.datatype) not in (
            "float16",
            "float32",
        ):
            self.console.print(
                "  Note: SVS-VAMANA takes only float16 or float32; the plan will say so."
            )
        if final_algorithm == "hnsw":
            for key, label in (
                ("m", "M (links per node)"),
                ("ef_construction", "EF_CONSTRUCTION (build-time search depth)"),
                ("ef_runtime", "EF_RUNTIME (query-time search depth)"),
            ):
                param: int | None = getattr(a, key) if a.algorithm == "hnsw" else None
                shown = param if param is not None else "default"
                value = self.ask_until(
                    f"{label} [current: {shown}]:", _whole_in_or_blank(VECTOR_LIMITS["hnsw"][key])
                )
                if value is not None and value != param:
                    changes[key] = value

    def remove_field(self) -> None:
        names = self.current_fields()
        chosen = self.pick_field("Field to remove (number or name):", names)
        if chosen in {str(f["name"]) for f in self.add}:
            self.add = [f for f in self.add if f["name"] != chosen]
            return
        original = self.source_name(chosen)
        if original != chosen:
            self.console.print(
                f"  Refused: {chosen!r} is renamed in this patch; a renamed field stays",
                markup=False,
            )
            return
        self.update.pop(chosen, None)
        self.remove.append(chosen)

    def rename_field(self) -> None:
        names = [
            n
            for n in self.current_fields()
            if n not in {str(f["name"]) for f in self.add} and self.source_name(n) == n
        ]
        chosen = self.pick_field("Field to rename (number or name):", names)
        taken = set(self.current_fields()) | set(self.schema.field_names)

        def check(answer: str) -> str:
            if not answer:
                raise Refused("the new name cannot be empty")
            if answer in taken:
                raise Refused(f"a field named {answer!r} already exists")
            return answer

        new = self.ask_until("New field name:", check)
        self.rename.append(FieldRename(old_name=chosen, new_name=new))
        if chosen in self.update:
            self.update[new] = self.update.pop(chosen)

    def rename_index(self) -> None:
        def check(answer: str) -> str:
            if not answer:
                raise Refused("the index name cannot be empty")
            if answer in self.existing_indexes:
                raise Refused(f"an index named {answer!r} already exists")
            return answer

        name = self.ask_until("New index name:", check)
        self.index = IndexChange(
            name=name, prefix=self.index.prefix, key_separator=self.index.key_separator
        )

    def change_prefix(self) -> None:
        if len(self.schema.prefixes) != 1:
            self.console.print(
                "  Refused: this index has several prefixes; moving keys needs exactly one"
            )
            return

        def check(answer: str) -> str:
            if not answer:
                raise Refused("the prefix cannot be empty")
            if answer == self.schema.prefixes[0]:
                raise Refused("that is the current prefix")
            return answer

        prefix = self.ask_until(f"New key prefix [current: {self.schema.prefixes[0]}]:", check)
        self.index = IndexChange(
            name=self.index.name, prefix=prefix, key_separator=self.index.key_separator
        )

    def preview(self) -> None:
        self.console.print(self.patch().to_yaml(), markup=False, highlight=False)


def _positive_float_or_blank(answer: str) -> float | None:
    if not answer:
        return None
    try:
        value = float(answer)
    except ValueError:
        raise Refused(f"{answer!r} is not a number") from None
    if not math.isfinite(value):
        raise Refused("it must be a finite number")
    if value <= 0:
        raise Refused("it must be greater than 0")
    return value


def _whole_in_or_blank(limit: Limit) -> Callable[[str], int | None]:
    """A check taking a blank answer or a whole number in ``limit``'s range."""

    def check(answer: str) -> int | None:
        if not answer:
            return None
        if not answer.isdigit() or not limit.range.admits(int(answer)):
            raise Refused(
                f"{answer!r} is out of range; {limit.label} takes {limit.range.describe()}"
            )
        return int(answer)

    return check


def _separator_or_blank(answer: str) -> str | None:
    if not answer:
        return None
    if len(answer) != 1:
        raise Refused("a separator is one character")
    problem = tag_separator_problem(answer)
    if problem is not None:
        raise Refused(problem)
    return answer
