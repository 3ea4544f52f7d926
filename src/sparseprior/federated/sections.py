"""``reproduce`` sections of the federated pillar (importing this module registers them)."""

from __future__ import annotations

from sparseprior.common.results import register_section


@register_section("fed", order=60, summary="federated dynamic sparse training (FedDST)")
def fed_section(run, mode, device):
    from sparseprior.federated.experiments import fed_section as run_section

    return run_section(run, mode, device)
