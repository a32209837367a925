"""The 50-digit int beta of a DDPM schedule: the reference of the processes' knot tests."""

import mpmath


def integrated_beta_mp(process, snap_knots=False):
    """B(t) = int_0^t beta(s) ds in 50 digits, from the float64 betas' rates -log(1 - beta_j),
    constant on [j/N, (j + 1)/N). t is taken as the float64 given; with snap_knots, a time
    whose t N rounds to an integer is that knot j/N itself (sgm_ref.processes.discrete's
    convention). Evaluate differences of B inside mpmath.workdps(50)."""
    N = process.num_train_timesteps
    with mpmath.workdps(50):
        rates = [-mpmath.log(1 - mpmath.mpf(float(b))) for b in process.betas()]
        knots = [mpmath.mpf(0)]
        for r in rates:
            knots.append(knots[-1] + r)

    def B(t):
        with mpmath.workdps(50):
            x = mpmath.mpf(float(t)) * N
            if snap_knots and float(t) * N == round(float(t) * N):
                x = mpmath.nint(x)
            j = min(int(mpmath.floor(x)), N - 1)
            return knots[j] + (x - j) * rates[j]

    return B
