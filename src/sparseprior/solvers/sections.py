"""``reproduce`` sections of this pillar (importing this module registers them)."""

from __future__ import annotations

from sparseprior.common.results import register_section


@register_section("solvers", order=10, summary="learned solvers vs ISTA/FISTA (headline)")
def solvers_section(run, mode, device):
    from sparseprior.solvers.headline import solvers_section as run_section

    return run_section(run, mode, device)
