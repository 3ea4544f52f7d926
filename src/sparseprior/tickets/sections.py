"""``reproduce`` sections of this pillar (importing this module registers them)."""

from __future__ import annotations

from sparseprior.common.results import register_section


@register_section("tickets", order=20, summary="lottery tickets (IMP with rewinding)")
def tickets_section(run, mode, device):
    from sparseprior.tickets.experiments import tickets_section as run_section

    return run_section(run, mode, device)


@register_section("earlybird", order=30, summary="Early-Bird tickets")
def earlybird_section(run, mode, device):
    from sparseprior.tickets.earlybird import earlybird_section as run_section

    return run_section(run, mode, device)
