"""The index-level commands a plan's apply sends, in order, for review. Pure code."""

from __future__ import annotations

import shlex

from redismigrate.plan import MigrationPlan, Online
from redismigrate.render import ft_create_args
from redismigrate.shadow import shadow_schema


def index_commands(plan: MigrationPlan) -> list[list[str]]:
    """Every FT.DROPINDEX, FT.CREATE and FT.ALIAS* the apply of ``plan`` sends, in the
    order it sends them (document writes, renames and reads are not listed)."""
    source = plan.source.physical_index or plan.source.index_name
    name, new_name = plan.source.index_name, plan.target_index_name
    target = plan.merged_target_schema
    if isinstance(plan.mode, Online):
        shadow = plan.mode.shadow_index
        # an online re-encoding: the vector read from its shadow field (`<field>__rm AS <field>`)
        built = shadow_schema(target, plan.mode.reencode)
        out = [ft_create_args(built, index_name=shadow), ["MULTI"]]
        out += [
            ["FT.ALIASUPDATE", a, shadow] for a in plan.source.aliases if a not in (name, new_name)
        ]
        if source == name:  # a plain index: its name becomes an alias of the shadow
            out += [["FT.DROPINDEX", name], ["FT.ALIASADD", new_name, shadow]]
        else:
            if new_name == name:
                out.append(["FT.ALIASUPDATE", name, shadow])
            else:
                out += [["FT.ALIASDEL", name], ["FT.ALIASADD", new_name, shadow]]
            out.append(["FT.DROPINDEX", source])
        out.append(["EXEC"])
        return out
    rewrites = any(c.rewrite_documents for c in plan.vector_changes)
    out = [
        ["FT.DROPINDEX", source],
        ft_create_args(target, skip_initial_scan=rewrites),
    ]
    out += [["FT.ALIASUPDATE", a, new_name] for a in plan.source.aliases]
    return out


def shell_line(command: list[str]) -> str:
    """One command as redis-cli would take it (arguments quoted where needed)."""
    return " ".join(shlex.quote(part) for part in command)
