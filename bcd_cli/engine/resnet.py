"""Algorithm 3 of Zeng et al. (ICML 2019): three-splitting BCD for a ResNet, backward order (docs/math.md §1.3).

Objective (3.4): as (2.5), but a residual layer i penalises
gamma/2 ||V_i - V_{i-1} - sigma(U_i)||^2 (its output is its input plus sigma(U_i)).
Layer 1 (input to width) and the output layer are plain; the layers between keep the width.
The sweep is Algorithm 2's with two targets changed:

    V_i <- argmin s + gamma/2 ||V - V_{i-1} - sigma(U_i)||^2 + gamma/2 ||V_{i+1} - V - sigma(U_{i+1})||^2
                 + rho/2 ||U_{i+1} - W_{i+1} V - b_{i+1}||^2,
           the first term without V_{i-1} when layer i is plain, the second only when layer i+1 is residual:
           (2 gamma I + rho W^T W) V = gamma (V_{i-1} + sigma(U_i)) + gamma (V_{i+1} - sigma(U_{i+1}))
                                       + rho W^T (U_{i+1} - b_{i+1})   for s = 0;
    U_i <- the elementwise prox of Algorithm 2 with target V_i - V_{i-1} in place of V_i
           (``residual_input``).

The two blocks are derived in docs/math.md §2.2 and §2.3.
"""

from __future__ import annotations

from torch import Tensor

from bcd_cli.engine.network import MLP
from bcd_cli.engine.three_splitting import ThreeSplittingBCD
from bcd_cli.engine.workspace import Shapes, Tally


class ResNetBCD(ThreeSplittingBCD):
    """Three-splitting BCD for networks with residual layers (Algorithm 3)."""

    name = "resnet"
    residual = True

    def hidden_state_target(self, l: int) -> tuple[Tensor, float]:
        net, U, V, gamma = self.net, self.U, self.V, self.gamma
        target, weight = net.layer_output(l, V[l], U[l]), gamma  # gamma/2 ||V - V_{i-1} - sigma(U_i)||^2
        if net.residual[l + 1]:  # gamma/2 ||V - (V_{i+1} - sigma(U_{i+1}))||^2 from the residual successor
            target.add_(V[l + 2]).sub_(net.acts[l + 1](U[l + 1])).mul_(0.5)  # layer_output: a new tensor
            weight = 2 * gamma
        return self.with_proximal_term(l, target, weight)

    @classmethod
    def hidden_state_target_workspace(cls, t: Tally, s: Shapes, l: int) -> None:
        """Three-splitting's, and before the proximal term sigma(U_{l+1}) of a residual successor."""
        block = s.sizes[l + 1] * s.n * s.e
        MLP.layer_output_workspace(t, s, l, s.n)
        if s.residual[l + 1]:
            t.touch(block, s.act.forward * block)
        if not s.reg_v.quadratic:
            t.touch(block)

    def residual_input(self, l: int) -> Tensor | None:
        return self.V[l] if self.net.residual[l] else None
