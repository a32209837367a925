"""A multilayer perceptron with hand-written backpropagation over one flat parameter vector.

    h_0 = [x, e(t)],   z_l = h_l W_l + b_l,   h_{l+1} = act(z_l)  (l < L),   out = z_L

Backward (a vector-Jacobian product with g = dL/dout):

    dL/dW_L = h_L^T g,      dL/db_L = sum_rows g,      dL/dh_L = g W_L^T
    dL/dz_l = dL/dh_{l+1} * act'(z_l)
    dL/dW_l = h_l^T dL/dz_l,  dL/db_l = sum_rows dL/dz_l,  dL/dh_l = dL/dz_l W_l^T

All parameters live in one contiguous vector `params`; `weights[l]` (fan_in, fan_out)
and `biases[l]` (fan_out,) are views into it, so the optimiser, checkpoints and
gradient checks work on a single array. Each layer's block is laid out as the matrix
[W_l; b_l] of shape (fan_in + 1, fan_out) and each layer input carries a last column
of ones, so one matrix product gives h_l W_l + b_l and one gives [dL/dW_l; dL/db_l]
= [h_l, 1]^T dL/dz_l. Matrix products go to BLAS with preallocated outputs; the
element-wise work between them is sgm_ref.kernels.dense.
"""

import collections.abc

import numpy as np

from .._validation import check_count, check_float_dtype, check_points, check_rng, check_times
from ..kernels.dense import ACTIVATIONS, activation_forward_unguarded
from .embedding import TimeEmbedding

__all__ = ["MLP"]

# Rows per block when evaluating without a tape: bounds memory for large batches.
_INFERENCE_ROWS = 4096


class _Workspace:
    """Buffers for one batch size: layer inputs [h_l, 1], pre-activations z_l, act'(z_l).

    A hidden layer's z_l is dead once act(z_l) and act'(z_l) are written, so all hidden
    z_l share one buffer, which the backward pass then reuses as one of its two dL/dh
    buffers (ping): n (2 max width + d) numbers besides the tape [h_l, 1] and act'(z_l),
    instead of n (depth + 2) max width + n d.
    """

    def __init__(self, n, sizes, dtype):
        self.n = n
        self.H = [np.ones((n, m + 1), dtype) for m in sizes[:-1]]  # [h_l, 1], l = 0 .. L
        width = max(sizes[:-1])
        self.ping = np.empty(n * width, dtype)
        self.pong = np.empty(n * width, dtype)
        # z_0 .. z_{L-1} in ping (each consumed before the next is written), z_L = out of its own
        self.Z = [self.ping[:n * m].reshape(n, m) for m in sizes[1:-1]] + [np.empty((n, sizes[-1]), dtype)]
        self.D = [np.empty((n, m), dtype) for m in sizes[1:-1]]  # act'(z_l), l < L
        self.has_tape = False


def _widths_text(widths, shown=8):
    """widths as a list, a long one shortened: [128] * 1000000 for equal widths, else its first
    entries and the count (a --depth of a million printed a 5 MB message)."""
    widths = list(widths)
    if len(widths) <= shown:
        return str(widths)
    if len(set(widths)) == 1:
        return f"[{widths[0]}] * {len(widths)}"
    return f"[{', '.join(map(str, widths[:shown]))}, ...] ({len(widths)} layers)"


def _check_keys(given, known, what):
    """ValueError unless a dict given has exactly the keys known (a non-dict fails where it is read)."""
    if isinstance(given, dict) and set(given) != set(known):
        unknown, missing = sorted(set(given) - set(known)), sorted(set(known) - set(given))
        raise ValueError(f"{what} " + (f"has keys this version does not know, {unknown}" if unknown
                                       else f"lacks {missing}") + f"; it needs exactly {list(known)}")



def _layers_parameter_count(sizes):
    """sum_l (m_l + 1) m_{l+1}: the weights and biases of dense layers of the given sizes
    (d + time features, *widths, d)."""
    return sum((fan_in + 1) * fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))

class MLP:
    """Score network R^d x (0, T] -> R^d: an MLP on [x, e(t)].

    Parameters
    ----------
    d : int
        Dimension of x and of the output.
    widths : sequence of int
        Hidden layer widths (the depth is len(widths)).
    activation : {"relu", "silu", "tanh", "softplus"}
    time_embedding : str or TimeEmbedding
        "linear" ([t]), "log" ([log t]) or "fourier" (log t and its sines and cosines).
    dtype : float64 (default) or float32
    rng : numpy.random.Generator or int
        Initialisation: W_l, b_l ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (PyTorch's nn.Linear
        default), drawn layer by layer, weights before biases.
    """

    def __init__(self, d, widths=(128, 128, 128), activation="silu", time_embedding="linear",
                 dtype=np.float64, rng=0):
        d = check_count(d, "d")
        # a set or dict has no order of its own (a set of widths came back in hash order, a dict
        # as its keys); a 0-d array is not iterable (a TypeError), a 2-d one iterates over rows
        if isinstance(widths, (str, bytes, collections.abc.Set, collections.abc.Mapping)) \
                or not hasattr(widths, "__iter__") or (isinstance(widths, np.ndarray) and widths.ndim != 1):
            raise ValueError(f"widths must be a sequence of layer widths, e.g. (128, 128), got {widths!r}")
        widths = tuple(widths)
        for w in widths:
            check_count(w, "widths (each)")
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if not isinstance(time_embedding, TimeEmbedding):
            time_embedding = TimeEmbedding(time_embedding)
        if isinstance(rng, (int, np.integer)) and not isinstance(rng, (bool, np.bool_)):
            if rng < 0:
                raise ValueError(f"rng must be a Generator or an int seed >= 0, got {int(rng)}")
            rng = np.random.default_rng(rng)
        rng = check_rng(rng, "rng (a Generator or an int seed)")
        self.d = d
        self.widths = tuple(int(w) for w in widths)
        self.activation = activation
        self.embedding = time_embedding
        self.dtype = check_float_dtype(dtype)
        self.sizes = (d + time_embedding.dim,) + self.widths + (d,)
        n_params = _layers_parameter_count(self.sizes)
        too_big = ValueError(f"d = {d} and widths = {_widths_text(self.widths)} make {n_params} parameters "
                             f"({n_params * self.dtype.itemsize / 2**30:.3g} GiB), more than fit in memory; "
                             "use a smaller d, or fewer or narrower layers")
        if n_params * self.dtype.itemsize > np.iinfo(np.intp).max:
            raise too_big
        try:
            self.params = np.zeros(n_params, dtype=self.dtype)
        except MemoryError:
            raise too_big from None
        self.weights, self.biases = self._views(self.params)
        for W, b in zip(self.weights, self.biases):
            bound = 1.0 / np.sqrt(W.shape[0])
            W[...] = rng.uniform(-bound, bound, W.shape)
            b[...] = rng.uniform(-bound, bound, b.shape)
        self._kind = ACTIVATIONS[activation]
        self._layers = self._blocks(self.params)
        self._workspaces = {}

    # -- copies ---------------------------------------------------------------------------
    # weights, biases and the layer blocks are views into params; a pickle or deepcopy
    # would turn each into an array of its own, cut off from the params an optimiser
    # updates. Only params travels; the views are made again on the copy.
    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("weights", "biases", "_layers", "_workspaces", "_tape"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.weights, self.biases = self._views(self.params)
        self._layers = self._blocks(self.params)
        self._workspaces = {}

    # -- structure ------------------------------------------------------------------------
    @property
    def n_params(self):
        return self.params.size

    @property
    def depth(self):
        return len(self.widths)

    def _blocks(self, flat):
        """Per-layer [W_l; b_l] views, shape (fan_in + 1, fan_out), into a flat vector."""
        blocks, offset = [], 0
        for fi, fo in zip(self.sizes[:-1], self.sizes[1:]):
            blocks.append(flat[offset:offset + (fi + 1) * fo].reshape(fi + 1, fo))
            offset += (fi + 1) * fo
        return blocks

    def _views(self, flat):
        """Per-layer (weights, biases) views into a flat vector laid out like params."""
        blocks = self._blocks(flat)
        return [B[:-1] for B in blocks], [B[-1] for B in blocks]

    def layer_views(self, flat):
        """(weights, biases) views into any flat vector of length n_params (e.g. a gradient)."""
        flat = np.asarray(flat)
        if flat.shape != (self.n_params,):
            raise ValueError(f"flat must have shape ({self.n_params},), got {flat.shape}")
        return self._views(flat)

    def config(self):
        """JSON-ready architecture description (the model file header uses it)."""
        return {
            "d": self.d,
            "widths": list(self.widths),
            "activation": self.activation,
            "time_embedding": self.embedding.to_dict(),
            "dtype": self.dtype.name,
        }

    @classmethod
    def from_config(cls, config, params=None):
        """Rebuild from config(); copy params (flat) in if given.

        Keys other than config()'s, here or in its time_embedding, are refused, not ignored:
        each names a setting this version would not apply (a network other than the one
        described), and a time embedding without n_frequencies is incomplete.
        """
        try:
            _check_keys(config, ("d", "widths", "activation", "time_embedding", "dtype"), "network config")
            _check_keys(config["time_embedding"], ("kind", "n_frequencies"), "time_embedding")
            emb = TimeEmbedding(**config["time_embedding"])
            net = cls(config["d"], config["widths"], config["activation"], emb, config["dtype"], rng=0)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"network config is incomplete or malformed: {exc}") from None
        if params is not None:
            net.set_params(params)
        return net

    def set_params(self, theta):
        """Copy a flat vector into params (in place: the layer views stay valid)."""
        theta = np.asarray(theta)
        if theta.shape != self.params.shape:
            raise ValueError(f"theta must have shape {self.params.shape}, got {theta.shape}")
        if theta.dtype != self.dtype:
            raise ValueError(f"theta must have dtype {self.dtype.name} (the network's), got {theta.dtype}")
        if not np.all(np.isfinite(theta)):
            raise ValueError("theta contains non-finite values")
        self.params[...] = theta

    def __repr__(self):
        return (f"MLP(d={self.d}, widths={_widths_text(self.widths)}, activation={self.activation!r}, "
                f"time_embedding={self.embedding.kind!r}, dtype={self.dtype.name}, n_params={self.n_params})")

    # -- forward ------------------------------------------------------------------------------
    def _workspace(self, n):
        ws = self._workspaces.pop(n, None)
        if ws is None:
            if len(self._workspaces) >= 3:  # the training batch, a block size and a remainder
                self._workspaces.pop(next(iter(self._workspaces)))  # the least recently used
            ws = _Workspace(n, self.sizes, self.dtype)
        self._workspaces[n] = ws  # (re)inserted last: dict order is recency
        return ws

    def _check_inputs(self, x, t):
        checked = check_points(x, "x", d=self.d)
        if checked.dtype != self.dtype:
            # the dtype passed, not check_points' promotion of integers to float64 (int64 x for a
            # float32 network was reported as "got float64"); as TrainStep words it for data
            given = getattr(x, "dtype", None)
            given = np.asarray(x).dtype if given is None else given
            raise ValueError(f"x must have dtype {self.dtype.name} (the network's), got {given}; pass "
                             f"np.asarray(x, dtype=np.{self.dtype.name})")
        x = checked
        t = np.broadcast_to(check_times(t, n=x.shape[0]), (x.shape[0],))
        return x, t

    def _run(self, ws, tape):
        """Layers on ws.H[0] (already filled); output in ws.Z[-1]."""
        L = len(self._layers) - 1
        # e^z = inf for z > 709 (and 1 / e^z = inf below -745) is what the activation kernels
        # expect; an overflow of the products (and the inf - inf it leads to) shows as a
        # non-finite output, which the callers check. In a hidden layer relu, softplus and tanh
        # would make it finite (0 or +-1, whatever the exact z: a sum can overflow while the
        # exact z is moderate), so there the output is made NaN and the tape dropped
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for l in range(L):
                np.matmul(ws.H[l], self._layers[l], out=ws.Z[l])
                if not activation_forward_unguarded(ws.Z[l], self._kind, ws.H[l + 1], ws.D[l], tape):
                    ws.Z[L][...] = np.nan
                    ws.has_tape = False
                    return ws.Z[L]
            np.matmul(ws.H[L], self._layers[L], out=ws.Z[L])
        ws.has_tape = tape
        return ws.Z[L]

    def _fill_input(self, ws, x, t):
        # the workspace's tape (if a forward(keep=True) left one) is spoilt from here on, also
        # if the time embedding refuses t after x is written: a backward must not read it
        ws.has_tape = False
        ws.H[0][:, :self.d] = x
        self.embedding(t, ws.H[0][:, self.d:-1])

    def forward(self, x, t, keep=False):
        """Network output net(x, t).

        Parameters
        ----------
        x : ndarray, shape (n, d), the network's dtype
            (integers are float64 points: a float64 network's only; x of another dtype is
            refused, the message naming the dtype passed)
        t : float or ndarray of shape (n,)
        keep : bool
            Keep what backward needs (all rows at once); otherwise rows are processed
            in blocks and nothing is kept.

        Returns
        -------
        ndarray, shape (n, d): a new array.

        Raises
        ------
        ValueError
            For a bad x or t (shape, dtype, non-finite, t < 0), if the output
            overflows the dtype (inputs or parameters far from order 1), or if it is
            not finite because params holds a NaN or inf (the first one is named).
        """
        x, t = self._check_inputs(x, t)
        n = x.shape[0]
        if keep:
            ws = self._workspace(n)
            self._fill_input(ws, x, t)
            self._tape = ws
            out = self._run(ws, tape=True).copy()
        else:
            out = np.empty((n, self.d), dtype=self.dtype)
            for start in range(0, n, _INFERENCE_ROWS):
                rows = slice(start, min(start + _INFERENCE_ROWS, n))
                ws = self._workspace(rows.stop - rows.start)
                self._fill_input(ws, x[rows], t[rows])
                out[rows] = self._run(ws, tape=False)
        if not np.all(np.isfinite(out)):
            self._overflow("output", x, t)
        return out

    def _overflow(self, what, x=None, t=None, rescale="x, t or the parameters"):
        """Raise for a non-finite result of finite inputs, with the sizes that caused it; or with
        the non-finite parameters that did (written into params or a layer view directly, as
        set_params and load refuse them), which no rescaling would mend."""
        bad = np.flatnonzero(~np.isfinite(self.params))
        if bad.size:
            i, start = int(bad[0]), 0
            for layer, (fi, fo) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
                if i < start + (fi + 1) * fo:
                    break
                start += (fi + 1) * fo
            part = "biases" if i - start >= fi * fo else "weights"  # the block [W_l; b_l], b_l last
            raise ValueError(f"the network's {what} is not finite: params holds {bad.size} non-finite value(s), "
                             f"the first params[{i}] = {self.params[i]} (layer {layer}'s {part}); "
                             "set finite parameters (set_params refuses non-finite ones)")
        sizes = f"largest |parameter| {float(np.max(np.abs(self.params))):.3g}"
        if x is not None:
            sizes = (f"largest |x| entry {float(np.max(np.abs(x))):.3g}, largest |t| "
                     f"{float(np.max(np.abs(t))):.3g}, " + sizes)
        raise ValueError(f"the network's {what} overflows {self.dtype.name} ({sizes}); "
                         f"rescale {rescale} toward order 1")

    __call__ = forward

    # -- forward-mode derivatives in x (for likelihoods) --------------------------------------
    def _tangent_rows(self, k):
        """Rows per block of a tangent pass: bounds the (rows, k, width) tangents to ~2**22 numbers."""
        return max(1, 2**22 // (max(1, k) * max(self.sizes[1:])))

    def _tangents(self, ws, T):
        """Push the tangents T = dz_0 (r, k, m_0) of the first pre-activation through the hidden
        layers of the taped forward pass in ws; returns d h_L (r, k, m_L) (before the last layer)."""
        L = len(self._layers) - 1
        for l in range(L):
            T *= ws.D[l][:, None, :]                       # d h_{l+1} = act'(z_l) * d z_l
            if l + 1 < L:
                r, k, m = T.shape  # the sizes spelt out: -1 is ambiguous for k = 0 directions
                T = (T.reshape(r * k, m) @ self.weights[l + 1]).reshape(r, k, self.sizes[l + 2])
        return T

    def jvp(self, x, t, tangents):
        """Jacobian-vector products of net(., t) at x, forward mode (no tape is kept).

        Parameters
        ----------
        x : ndarray, shape (n, d), the network's dtype
        t : float or ndarray of shape (n,)
        tangents : ndarray, shape (n, k, d)
            k directions v per row.

        Returns
        -------
        out, jv : ndarray, shapes (n, d) and (n, k, d)
            net(x, t) and J(x) v for each direction, J = d net / d x.

        Each block of rows costs one forward pass plus k times the matrix products after
        the input layer (one BLAS product of k rows per row and layer).

        Raises
        ------
        ValueError
            As forward; tangents of the wrong shape or non-finite; an overflow.
        """
        x, t = self._check_inputs(x, t)
        n = x.shape[0]
        V = np.asarray(tangents)
        if V.dtype.kind not in "iuf":
            raise ValueError(f"tangents must be a real array (float or integer), got dtype {V.dtype}")
        if V.ndim != 3 or V.shape[0] != n or V.shape[2] != self.d:
            raise ValueError(f"tangents must have shape (n, k, d) = ({n}, k, {self.d}), got {V.shape}")
        if not np.all(np.isfinite(V)):
            raise ValueError("tangents must be finite")
        with np.errstate(over="ignore"):
            cast = V.astype(self.dtype, copy=False)
        if not np.all(np.isfinite(cast)):  # float64 tangents beyond float32's range became inf
            raise ValueError(f"tangents must fit the network's dtype {self.dtype.name}: the largest |entry| "
                             f"{float(np.max(np.abs(V))):.3g} exceeds its largest value "
                             f"{float(np.finfo(self.dtype).max):.3g}; scale them down (J v is linear in v)")
        V = cast
        k = V.shape[1]
        out = np.empty((n, self.d), dtype=self.dtype)
        jv = np.empty((n, k, self.d), dtype=self.dtype)
        W0, WL = self.weights[0][:self.d], self.weights[-1]
        # an overflow of the tangent products is named below, not warned about (as forward's)
        with np.errstate(over="ignore", invalid="ignore"):
            for rows, ws in self._forward_blocks(x, t, k, out):
                r = rows.stop - rows.start
                # shapes spelt out (not -1): k = 0 directions give empty products, not a reshape error
                T = (V[rows].reshape(r * k, self.d) @ W0).reshape(r, k, W0.shape[1])
                if self.depth > 0:  # else the input layer is the last
                    T = (self._tangents(ws, T).reshape(r * k, WL.shape[0]) @ WL).reshape(r, k, self.d)
                jv[rows] = T
        if not (np.all(np.isfinite(out)) and np.all(np.isfinite(jv))):
            self._overflow("Jacobian-vector product (largest |tangent| entry "
                           f"{float(np.max(np.abs(V))) if V.size else 0.0:.3g})", x, t,
                           rescale="x, t, the tangents or the parameters")
        return out, jv

    def _forward_blocks(self, x, t, k, out):
        """The forward pass in row blocks sized for k tangents per row: yields (rows, workspace)
        with out[rows] written and the block's tape kept for the tangents, then dropped (it is
        not a backward's to use)."""
        n, step = x.shape[0], self._tangent_rows(k)
        for start in range(0, n, step):
            rows = slice(start, min(start + step, n))
            ws = self._workspace(rows.stop - rows.start)
            self._fill_input(ws, x[rows], t[rows])
            out[rows] = self._run(ws, tape=True)
            try:
                yield rows, ws
            finally:  # also when the caller's loop stops early (an exception, a close)
                ws.has_tape = False

    def jacobian_trace(self, x, t):
        """tr (d net / d x) at each row, exactly, by forward mode with the d unit tangents at once.

        The tangents of the first pre-activation are the rows of W_0 (the same for every
        point), so the pass costs one forward pass plus d times the matrix products
        after the input layer: about n d sum_{l>=1} m_{l-1} m_l multiply-adds, in one
        BLAS product of n d rows per layer. d vector-Jacobian products through backward
        would cost about twice that (each also forms the parameter gradients' products
        unless skipped, and runs d separate passes).

        Returns
        -------
        (out, trace): net(x, t), shape (n, d), and the trace, shape (n,), network's dtype.

        Raises as forward.
        """
        x, t = self._check_inputs(x, t)
        n, d = x.shape
        out = np.empty((n, d), dtype=self.dtype)
        trace = np.empty(n, dtype=self.dtype)
        W0, WL = self.weights[0][:d], self.weights[-1]
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is named below, not warned about
            for rows, ws in self._forward_blocks(x, t, d, out):
                r = rows.stop - rows.start
                if self.depth == 0:
                    trace[rows] = np.trace(W0)
                else:
                    T = self._tangents(ws, np.broadcast_to(W0, (r, d, W0.shape[1])).copy())
                    # tr J = sum_j (d h_L / d x_j) . W_L[:, j]: only the diagonal of the last product
                    trace[rows] = np.einsum("rjm,mj->r", T, WL)
        if not (np.all(np.isfinite(out)) and np.all(np.isfinite(trace))):
            self._overflow("Jacobian trace", x, t)
        return out, trace

    # -- backward -----------------------------------------------------------------------------
    def backward(self, grad_out, grad_params=None, input_grad=False):
        """Vector-Jacobian product of the last forward(..., keep=True) call.

        Parameters
        ----------
        grad_out : ndarray, shape (n, d)
            g = dL/dout for the rows of that forward call.
        grad_params : ndarray, shape (n_params,), optional
            Written in place (overwritten, not accumulated) if given.
        input_grad : bool
            Also return dL/dx, shape (n, d).

        Returns
        -------
        grad_params, or (grad_params, grad_x) if input_grad.

        Raises
        ------
        ValueError
            Without a preceding forward(..., keep=True), or after a later pass that
            reused its workspace (spoiling its tape); for a grad_out of the wrong
            shape or dtype or with a NaN or inf entry; for a grad_params that is not a
            contiguous ndarray of shape (n_params,) and the network's dtype, or that
            shares memory with params; or if the gradient overflows the dtype (a
            grad_out or parameters far from order 1).
        """
        ws = getattr(self, "_tape", None)
        if ws is None or not ws.has_tape or self._workspaces.get(ws.n) is not ws:
            # also after a forward(keep=True) whose tape a later pass spoilt: the message said only
            # "needs a preceding forward" to a caller who had run one (a review)
            raise ValueError("backward needs a preceding forward(x, t, keep=True) whose tape is intact: a later pass "
                             "of this network (forward, jvp, a loss) on a batch of the same size, or one that "
                             "displaced its workspace, spoils it; run forward(x, t, keep=True) again")
        g = np.asarray(grad_out)
        if g.shape != (ws.n, self.d) or g.dtype != self.dtype:
            raise ValueError(f"grad_out must have shape ({ws.n}, {self.d}) and dtype {self.dtype.name}, "
                             f"got {g.shape} {g.dtype}")
        if not np.all(np.isfinite(g)):
            # one NaN would spread through every weight it meets (most of the gradient)
            raise ValueError(f"grad_out contains {int(np.count_nonzero(~np.isfinite(g)))} non-finite "
                             "value(s) (NaN or inf); pass the finite dL/dout")
        if grad_params is None:
            grad_params = np.empty(self.n_params, dtype=self.dtype)
        elif not isinstance(grad_params, np.ndarray) or grad_params.shape != (self.n_params,) \
                or grad_params.dtype != self.dtype or not grad_params.flags.c_contiguous \
                or not grad_params.flags.writeable:
            got = (f"{grad_params.shape} {grad_params.dtype}" if isinstance(grad_params, np.ndarray)
                   else type(grad_params).__name__)
            raise ValueError(f"grad_params must be a contiguous writeable ndarray of shape ({self.n_params},) "
                             f"and dtype {self.dtype.name} (it is written in place), got {got}")
        if np.may_share_memory(grad_params, self.params):
            # the pass reads W_l after writing the gradient of the layers above it: a gradient
            # written over params would be computed from parameters it had already replaced
            raise ValueError("grad_params must not share memory with the network's params (the backward pass reads "
                             "the weights while it writes the gradient); pass a separate buffer")
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is named below, not warned about
            grad_x = self._backward(ws, np.ascontiguousarray(g), grad_params, input_grad)
        # O(n_params) against the O(n n_params) products above
        if not np.all(np.isfinite(grad_params)) or (input_grad and not np.all(np.isfinite(grad_x))):
            self._overflow(f"gradient (largest |grad_out| entry {float(np.max(np.abs(g))):.3g})")
        return (grad_params, grad_x) if input_grad else grad_params

    def _backward(self, ws, g, grad_params, input_grad):
        grad_blocks = self._blocks(grad_params)
        L = len(self._layers) - 1
        n = ws.n
        buffers = (ws.ping, ws.pong)
        for l in range(L, -1, -1):
            if l < L:
                np.multiply(g, ws.D[l], out=g)
            np.matmul(ws.H[l].T, g, out=grad_blocks[l])  # [dL/dW_l; dL/db_l] at once
            if l > 0 or input_grad:
                m = self.sizes[l]
                g_prev = buffers[l % 2][:n * m].reshape(n, m)
                np.matmul(g, self.weights[l].T, out=g_prev)
                g = g_prev
        return g[:, :self.d].copy() if input_grad else None
