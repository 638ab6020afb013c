"""Samplers of the flow-matching path: flow_euler, flow_heun.

On the flow path x_t = (1 - t) x_0 + t eps (refdiff.gaussian.process.FlowProcess) the sample follows
the ODE dx/dt = u(x, t), u = eps - x_0 the velocity (Liu et al. 2022 eq. 1; Lipman et al. 2023
eq. 1 and 23). It starts at t = 1 where sigma = t / (1 - t) is infinite, so these samplers work on x
in the model's scale with the velocity, as diffusers' FlowMatchEulerDiscreteScheduler does:

    fn(velocity, x, times, rng) -> x at times[-1]
    velocity(x, i): u at grid point i (the model's output for prediction_type "flow", else eps - x_0
                    computed from it); times: the grid's flow times, descending from 1 to 0.

References: Liu, Gong, Liu 2022, Flow Straight and Fast (rectified flow), arXiv:2209.03003;
Lipman et al. 2023, Flow Matching for Generative Modeling, arXiv:2210.02747; Esser et al. 2024
(Stable Diffusion 3) sec. 2; diffusers FlowMatchEulerDiscreteScheduler, FlowMatchHeunDiscreteScheduler.
"""
from .registry import register_sampler


@register_sampler("flow_euler", grid="flow", works_on="velocity")
def sample_flow_euler(velocity, x, times, rng):
    """x_{i+1} = x_i + (t_{i+1} - t_i) u(x_i, t_i): Euler on dx/dt = u (Liu et al. 2022 eq. 1;
    diffusers FlowMatchEulerDiscreteScheduler.step). First order, one evaluation per step."""
    for i in range(len(times) - 1):
        x = x + (times[i + 1] - times[i]) * velocity(x, i)
    return x


@register_sampler("flow_heun", grid="flow", works_on="velocity")
def sample_flow_heun(velocity, x, times, rng):
    """Heun on dx/dt = u (EDM Algorithm 1 with the velocity as the derivative; diffusers
    FlowMatchHeunDiscreteScheduler without churn):

        u_i = u(x_i, t_i),  x' = x_i + (t_{i+1} - t_i) u_i,
        x_{i+1} = x_i + (t_{i+1} - t_i) (u_i + u(x', t_{i+1})) / 2,  except to t = 0: x_{i+1} = x'

    Second order; two evaluations per step, one at the last (2N - 1 in all), as diffusers."""
    for i in range(len(times) - 1):
        dt = times[i + 1] - times[i]
        u = velocity(x, i)
        x_euler = x + dt * u
        x = x_euler if times[i + 1] == 0 else x + dt * (u + velocity(x_euler, i + 1)) / 2
    return x
