"""A zoo of small models built the ways users build them (re-typed from the patterns in
nngeometry's and BackPACK's test suites, the PyTorch NTK tutorial and common architectures),
for the exactness and state tests in test_ntk_zoo.py. Each entry: builder, input kind."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations
from torch.utils.checkpoint import checkpoint

from .models import (
    EmbeddingModel,
    LSTMModel,
    SequenceLinear,
    SharedLayer,
    SmallCNN,
    TinyResNet,
    TransformerClassifier,
    mlp,
)

K = 3


def inputs(kind: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """n samples of the input kind, float64 (token ids for the embedding kinds, booleans for
    "bits")."""
    shapes = {
        "vector": (6,),
        "image": (2, 7, 7),
        "volume": (1, 4, 4, 4),
        "sequence": (5, 4),
        "series": (2, 9),
    }
    if kind == "tokens":
        return torch.randint(0, 11, (n, 4), generator=gen)
    if kind == "bits":
        return torch.rand(n, 6, generator=gen) > 0.5
    return torch.randn(n, *shapes[kind], generator=gen, dtype=torch.float64)


class Head(nn.Module):
    """A body and an output head; subclasses change how the head is reached."""

    def __init__(self, d: int = 6, h: int = 7) -> None:
        super().__init__()
        self.body = nn.Linear(d, h)
        self.head = nn.Linear(h, K)


class FunctionalHead(Head):
    def forward(self, x):
        return F.linear(torch.tanh(self.body(x)), self.head.weight, self.head.bias)


class HeadTwiceFunctional(Head):
    """The head called as a module and its weight also used functionally."""

    def forward(self, x):
        h = torch.tanh(self.body(x))
        return self.head(h) + 0.5 * h[:, :K] @ self.head.weight[:, :K].T


class TiedEmbedding(nn.Module):
    """Weight tying as in language models: the embedding matrix is the output projection."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 5)
        self.mix = nn.Linear(5, 5)

    def forward(self, idx):
        h = torch.tanh(self.mix(self.emb(idx).mean(dim=1)))
        return h @ self.emb.weight[:K].T


class TiedLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.b.weight = self.a.weight
        self.out = nn.Linear(6, K)

    def forward(self, x):
        return self.out(torch.tanh(self.b(torch.tanh(self.a(x)))))


class SequenceFirst(nn.Module):
    """A sequence-first layout inside forward: Linear on (T, n, d)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 6)
        self.out = nn.Linear(6, K)

    def forward(self, x):  # (n, T, d)
        h = torch.tanh(self.proj(x.transpose(0, 1)))  # (T, n, 6)
        return self.out(h.mean(dim=0))


class Gate(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(d))

    def forward(self, x, gate):
        return x * self.scale * gate


class KeywordGate(nn.Module):
    """A per-sample tensor passed by keyword to a parametrised module."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 5)
        self.gate = Gate(5)
        self.out = nn.Linear(5, K)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.gate(h, gate=torch.sigmoid(h)))


class KeywordInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, K)

    def forward(self, x):
        return self.b(input=torch.tanh(self.a(input=x)))


class WeightNorm1d(nn.Linear):
    """Weight-normalised Linear overriding forward (nngeometry's test model)."""

    def forward(self, x):
        return F.linear(x, self.weight / self.weight.norm(dim=1, keepdim=True), self.bias)


class CosineConv2d(nn.Conv2d):
    def forward(self, x):
        w = self.weight / self.weight.flatten(1).norm(dim=1)[:, None, None, None]
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class NormalisedNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = CosineConv2d(2, 3, 3, padding=1)
        self.fc = WeightNorm1d(3, 5)
        self.out = nn.Linear(5, K)

    def forward(self, x):
        h = torch.relu(self.conv(x)).mean(dim=(2, 3))
        return self.out(torch.tanh(self.fc(h)))


class TwoNames(nn.Module):
    """One module registered under two names."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.net = nn.Sequential(self.lin, nn.Tanh(), nn.Linear(6, K))

    def forward(self, x):
        return self.net(x) + self.lin(x)[:, :K]


class Parametrized(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.a = nn.Linear(6, 7)
        self.b = nn.Linear(7, K)
        if kind == "weight_norm":
            parametrizations.weight_norm(self.a)
        elif kind == "spectral_norm":
            parametrizations.spectral_norm(self.a)
        else:
            parametrizations.orthogonal(self.b)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


class SpectralNormTrain(Parametrized):
    """spectral_norm in train mode: every forward runs a power-iteration step on buffers."""

    def __init__(self) -> None:
        super().__init__("spectral_norm")

    def train(self, mode: bool = True):
        super().train(mode)
        self.a.train(True)  # stays in train mode under .eval()
        return self


class Square(torch.autograd.Function):
    """A custom autograd Function with setup_context (vmap-able)."""

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g

    @staticmethod
    def vmap(info, in_dims, x):
        return x * x, in_dims[0]


class LegacyTanh(torch.autograd.Function):
    """An old-style custom Function whose backward reads a Python number (not vmap-able)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.tanh(x)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        one = 1.0 if float(g.abs().sum()) >= 0 else 0.0
        return one * g * (1 - torch.tanh(x) ** 2)


class CustomFunctions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, 5)
        self.c = nn.Linear(5, K)

    def forward(self, x):
        return self.c(LegacyTanh.apply(self.b(0.3 * Square.apply(self.a(x)))))


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(6, 6)
        self.out = nn.Linear(6, K)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        h = self.act(self.a(x))
        g = self.b(h)
        g += h  # in-place residual
        g.mul_(0.5)
        return self.out(torch.tanh(g))


class Norms(nn.Module):
    """GroupNorm, InstanceNorm (affine) and LayerNorm on a conv net."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.inorm = nn.InstanceNorm2d(4, affine=True)
        self.ln = nn.LayerNorm([4, 7, 7])
        self.out = nn.Linear(4, K)

    def forward(self, x):
        h = torch.tanh(self.gn(self.c1(x)))
        h = self.ln(torch.relu(self.inorm(h)))
        return self.out(h.mean(dim=(2, 3)))


class ConvZoo(nn.Module):
    """Padding modes, string padding, ConvTranspose2d, channels_last input."""

    def __init__(self) -> None:
        super().__init__()
        self.reflect = nn.Conv2d(2, 3, 3, padding=1, padding_mode="reflect")
        self.circular = nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular")
        self.replicate = nn.Conv2d(3, 3, 3, padding=2, dilation=2, padding_mode="replicate")
        self.same = nn.Conv2d(3, 3, 4, padding="same")
        self.valid = nn.Conv2d(3, 4, 2, padding="valid", stride=2)
        self.up = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
        self.out = nn.Linear(3, K)

    def forward(self, x):
        h = torch.tanh(self.reflect(x.contiguous(memory_format=torch.channels_last)))
        h = torch.tanh(self.replicate(torch.tanh(self.circular(h))))
        h = torch.relu(self.valid(torch.tanh(self.same(h))))
        return self.out(torch.tanh(self.up(h)).mean(dim=(2, 3)))


class Conv3dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv3d(1, 3, 3, padding=1)
        self.t = nn.ConvTranspose3d(3, 2, 2, stride=2)
        self.out = nn.Linear(2, K)

    def forward(self, x):
        return self.out(torch.tanh(self.t(torch.relu(self.c(x)))).mean(dim=(2, 3, 4)))


class Conv1dSeries(nn.Module):
    """Conv1d with stride, groups and a depthwise layer, plus AvgPool and Flatten."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(2, 4, 3, stride=2, padding=1)
        self.dw = nn.Conv1d(4, 4, 3, padding=1, groups=4)
        self.pool = nn.AvgPool1d(2)
        self.out = nn.Sequential(nn.Flatten(), nn.Linear(8, K))

    def forward(self, x):
        return self.out(self.pool(torch.tanh(self.dw(torch.relu(self.c1(x))))))


class Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(11, 5, mode="mean")
        self.out = nn.Linear(5, K)

    def forward(self, idx):
        return self.out(torch.tanh(self.bag(idx)))


class MultiRank(nn.Module):
    """One Linear applied to (n, d) and (n, T, d) inputs; one conv at two resolutions."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.conv = nn.Conv1d(4, 4, 3, padding=1)
        self.out = nn.Linear(4, K)

    def forward(self, x):  # (n, T, 4)
        seq = torch.tanh(self.lin(x))  # (n, T, 4)
        pooled = torch.tanh(self.lin(x.mean(dim=1)))  # (n, 4)
        c = self.conv(seq.transpose(1, 2)).mean(dim=2)
        c2 = self.conv(seq.transpose(1, 2)[:, :, ::2]).mean(dim=2)
        return self.out(pooled + c + c2)


class Attention(nn.Module):
    def __init__(self, batch_first: bool, weights: bool) -> None:
        super().__init__()
        self.batch_first, self.weights = batch_first, weights
        self.att = nn.MultiheadAttention(4, 2, batch_first=batch_first)
        self.out = nn.Linear(4, K)

    def forward(self, x):  # (n, T, 4)
        s = x if self.batch_first else x.transpose(0, 1)
        a, w = self.att(s, s, s, need_weights=self.weights)
        a = a if self.batch_first else a.transpose(0, 1)
        h = self.out(a.mean(dim=1))
        return h + w.sum(dim=(1, 2))[:, None] if self.weights else h


class CrossAttention(nn.Module):
    """kdim/vdim ≠ embed_dim, bias_k/bias_v, a causal mask and a key padding mask."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(4, 6)
        self.att = nn.MultiheadAttention(6, 3, kdim=4, vdim=5, add_bias_kv=True, batch_first=True)
        self.v = nn.Linear(4, 5)
        self.out = nn.Linear(6, K)

    def forward(self, x):
        t = x.shape[1]
        mask = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
        pad = torch.zeros(x.shape[0], t, dtype=torch.bool)
        pad[:, -1] = True
        a, _ = self.att(self.q(x), x, self.v(x), attn_mask=mask, key_padding_mask=pad)
        return self.out(a.mean(dim=1))


class EncoderNormFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(
            4, 2, 8, dropout=0.0, norm_first=True, activation="gelu"
        )  # sequence-first
        self.out = nn.Linear(4, K)

    def forward(self, x):
        return self.out(self.enc(x.transpose(0, 1)).mean(dim=0))


class Recurrent(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        cls = {"gru": nn.GRU, "rnn": nn.RNN}[kind]
        self.rnn = cls(4, 5, num_layers=2, bidirectional=True)  # sequence-first
        self.out = nn.Linear(10, K)

    def forward(self, x):
        out, h = self.rnn(x.transpose(0, 1))
        return self.out(out[-1]) + h.sum(dim=0)[:, :K]


class CellLoop(nn.Module):
    """An LSTMCell unrolled by hand (one module called T times)."""

    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.LSTMCell(4, 5)
        self.out = nn.Linear(5, K)

    def forward(self, x):
        h = c = torch.zeros(x.shape[0], 5, dtype=x.dtype)
        for t in range(x.shape[1]):
            h, c = self.cell(x[:, t], (h, c))
        return self.out(h)


class StateBlock(nn.Module):
    """A user module returning (output, state)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4, 4) / 2)
        self.u = nn.Parameter(torch.randn(4))

    def forward(self, x, state=None):
        h = torch.tanh(x @ self.w + (0 if state is None else state))
        return h, h * self.u


class StatefulNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = StateBlock()
        self.out = nn.Linear(4, K)

    def forward(self, x):
        h, s = self.block(x[:, 0])
        for t in range(1, x.shape[1]):
            h, s = self.block(x[:, t], state=s)
        return self.out(h + s)


class Positions(nn.Module):
    """A position embedding computed once for all samples and broadcast."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Embedding(5, 4)
        self.out = nn.Linear(4, K)

    def forward(self, x):
        return self.out(torch.tanh(x + self.pos(torch.arange(x.shape[1]))).mean(dim=1))


class PerSampleLoop(nn.Module):
    """A layer called on one sample at a time (unbatched inputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 5)
        self.out = nn.Linear(5, K)

    def forward(self, x):
        return self.out(torch.stack([torch.tanh(self.lin(row)) for row in x]))


class RootParameters(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.5))
        self.shift = nn.Parameter(torch.randn(K))
        self.lin = nn.Linear(6, K)

    def forward(self, x):
        return self.scale * torch.tanh(self.lin(x)) + self.shift


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, K)
        self.spare = nn.Linear(6, K)  # never called

    def forward(self, x):
        return self.lin(x)


class Hooked(nn.Module):
    """A user forward hook that rescales a Linear's output, and a pre-hook on its input."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(5, K)
        self.a.register_forward_hook(lambda m, args, out: 2.0 * out)
        self.b.register_forward_pre_hook(lambda m, args: (torch.tanh(args[0]),))

    def forward(self, x):
        return self.b(self.a(x))


class Activations(nn.Module):
    """PReLU (a parameter broadcast over channels), Softplus, ELU, Bilinear."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.prelu = nn.PReLU(5)
        self.prelu1 = nn.PReLU()
        self.bil = nn.Bilinear(5, 6, K)

    def forward(self, x):
        h = self.prelu1(nn.functional.elu(self.prelu(self.a(x))))
        return self.bil(h, F.softplus(x))


class ScalarOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 1), nn.Flatten(0))

    def forward(self, x):
        return self.net(x)


class ImageOutput(nn.Module):
    """Outputs with several axes per sample (flattened to k = 2·3·3)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(2, 2, 3, stride=2)

    def forward(self, x):
        return torch.tanh(self.c(x))


class SelfAttentionBlock(nn.Module):
    """Hand-written attention: Q/K/V Linears on (n, T, d), softmax over positions."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 4)
        self.out = nn.Linear(4, K)

    def forward(self, x):
        att = torch.softmax(self.q(x) @ self.k(x).transpose(1, 2) / 2.0, dim=-1)
        return self.out((att @ self.v(x)).mean(dim=1))


class Checkpointed(nn.Module):
    """Activation checkpointing (non-reentrant) around a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, K)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = checkpoint(lambda t: torch.tanh(self.b(t)), h, use_reentrant=False)
        return self.out(h)


class Scale(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6))

    def forward(self, x):
        return x.mul_(self.w)  # modifies its input in place


class InPlaceInput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.scale, self.out = nn.Linear(6, 6), Scale(), nn.Linear(6, K)

    def forward(self, x):
        return self.out(torch.tanh(self.scale(self.a(x))))


class MergedBatch(nn.Module):
    """Batch and time merged into one axis for a Linear, as older code does."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.out = nn.Linear(4, 5), nn.Linear(5, K)

    def forward(self, x):
        n, t, d = x.shape
        return self.out(torch.tanh(self.a(x.reshape(n * t, d))).reshape(n, t, -1).mean(dim=1))


class GradByFrequency(nn.Module):
    """nn.Embedding(scale_grad_by_freq=True): its backward scales by token counts in the batch,
    so a batch's gradient is not the sum of the samples' gradients (review 11, item 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 4, scale_grad_by_freq=True)
        self.out = nn.Linear(16, K)

    def forward(self, idx):
        return self.out(torch.tanh(self.emb(idx).flatten(1)))


class MixGradients(torch.autograd.Function):
    """Identity forward; the backward mixes the samples' cotangents (0 for a single sample)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g + 0.5 * (g.sum(dim=0, keepdim=True) - g)


class BackwardCoupled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out = nn.Linear(6, 5), nn.Linear(5, 5), nn.Linear(5, K)

    def forward(self, x):
        return self.out(torch.tanh(self.b(MixGradients.apply(torch.tanh(self.a(x))))))


class SpectralNormTwice(nn.Module):
    """One spectral-normalised layer applied twice in train mode: each call runs a power
    iteration on its buffers, so the second call sees the first call's update (item 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.l1 = nn.Linear(6, 5)
        self.sn = parametrizations.spectral_norm(nn.Linear(5, 5))
        self.l2 = nn.Linear(5, K)

    def forward(self, x):
        return self.l2(torch.tanh(self.sn(torch.tanh(self.sn(self.l1(x))))))

    def train(self, mode: bool = True):
        super().train(mode)
        self.sn.train(True)  # stays in train mode under .eval()
        return self


class Standardise(nn.Module):
    def forward(self, x):
        return x.sub_(0.5).mul_(2.0)  # in-place preprocessing of the model's own input


class InPlaceOnInput(nn.Module):
    """In-place ops on the model's input (item 6): the caller's x must stay unchanged."""

    def __init__(self) -> None:
        super().__init__()
        self.pre, self.a, self.out = Standardise(), nn.Linear(6, 5), nn.Linear(5, K)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.out(torch.tanh(self.a(self.act(self.pre(x)))))


class ParameterTable(nn.Module):
    """Integer inputs indexing a bare nn.Parameter (no nn.Embedding, item 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(11, 4))
        self.out = nn.Linear(4, K)

    def forward(self, idx):
        return self.out(torch.tanh(self.table[idx].mean(dim=1)))


class OneHot(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.out = nn.Linear(11, 5), nn.Linear(5, K)

    def forward(self, idx):
        hot = F.one_hot(idx, 11).to(self.a.weight.dtype).sum(dim=1)
        return self.out(torch.tanh(self.a(hot)))


class BoolMask(nn.Module):
    """Boolean inputs (a feature mask) converted inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.out = nn.Linear(6, 5), nn.Linear(5, K)

    def forward(self, mask):
        return self.out(torch.tanh(self.a(mask.to(self.a.weight.dtype) - 0.5)))


class SparseEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 4, sparse=True)
        self.out = nn.Linear(16, K)

    def forward(self, idx):
        return self.out(torch.tanh(self.emb(idx).flatten(1)))


def _frozen_mlp() -> nn.Module:
    model = mlp(k=K)
    model[0].weight.requires_grad_(False)
    model[4].bias.requires_grad_(False)
    return model


def _compiled() -> nn.Module:
    return torch.compile(mlp(k=K), backend="eager")


def _compiled_child() -> nn.Module:
    model = mlp(k=K)
    model[2] = torch.compile(model[2], backend="eager")
    return model


def _compiled_in_place() -> nn.Module:
    model = SmallCNN(K)
    model.c2.compile(backend="eager")
    return model


def _old_weight_norm() -> nn.Module:
    model = mlp(k=K)
    torch.nn.utils.weight_norm(model[2])
    return model


# name → (builder, input kind)
ZOO: dict[str, tuple[object, str]] = {
    "mlp_tanh": (lambda: mlp(k=K), "vector"),
    "mlp_gelu_nobias": (lambda: mlp(nn.GELU, K, bias=False), "vector"),
    "mlp_frozen": (_frozen_mlp, "vector"),
    "in_place": (InPlace, "vector"),
    "small_cnn": (lambda: SmallCNN(K), "image"),
    "resnet_bn_ln": (lambda: TinyResNet(K), "image"),
    "norms": (Norms, "image"),
    "conv_zoo": (ConvZoo, "image"),
    "conv3d_transpose": (Conv3dNet, "volume"),
    "conv1d_series": (Conv1dSeries, "series"),
    "image_output": (ImageOutput, "image"),
    "embedding": (lambda: EmbeddingModel(K), "tokens"),
    "embedding_bag": (Bag, "tokens"),
    "shared_module": (lambda: SharedLayer(K), "vector"),
    "sequence_linear": (lambda: SequenceLinear(K), "sequence"),
    "multi_rank": (MultiRank, "sequence"),
    "functional_head": (FunctionalHead, "vector"),
    "head_module_and_functional": (HeadTwiceFunctional, "vector"),
    "tied_embedding": (TiedEmbedding, "tokens"),
    "tied_linear": (TiedLinear, "vector"),
    "two_names": (TwoNames, "vector"),
    "sequence_first": (SequenceFirst, "sequence"),
    "keyword_gate": (KeywordGate, "vector"),
    "keyword_input": (KeywordInput, "vector"),
    "normalised_subclasses": (NormalisedNet, "image"),
    "weight_norm_param": (lambda: Parametrized("weight_norm"), "vector"),
    "spectral_norm_param": (lambda: Parametrized("spectral_norm"), "vector"),
    "spectral_norm_train": (SpectralNormTrain, "vector"),
    "orthogonal_param": (lambda: Parametrized("orthogonal"), "vector"),
    "old_weight_norm": (_old_weight_norm, "vector"),
    "custom_functions": (CustomFunctions, "vector"),
    "hooked": (Hooked, "vector"),
    "activations": (Activations, "vector"),
    "root_parameters": (RootParameters, "vector"),
    "unused_parameters": (Unused, "vector"),
    "scalar_output": (ScalarOutput, "vector"),
    "positions_broadcast": (Positions, "sequence"),
    "per_sample_loop": (PerSampleLoop, "vector"),
    "mha_batch_first": (lambda: Attention(True, True), "sequence"),
    "mha_sequence_first": (lambda: Attention(False, False), "sequence"),
    "cross_attention": (CrossAttention, "sequence"),
    "hand_attention": (SelfAttentionBlock, "sequence"),
    "transformer_classifier": (lambda: TransformerClassifier(K), "tokens"),
    "encoder_norm_first": (EncoderNormFirst, "sequence"),
    "lstm": (lambda: LSTMModel(K), "sequence"),
    "gru_bidirectional": (lambda: Recurrent("gru"), "sequence"),
    "rnn_bidirectional": (lambda: Recurrent("rnn"), "sequence"),
    "lstm_cell_loop": (CellLoop, "sequence"),
    "user_tuple_state": (StatefulNet, "sequence"),
    "compiled": (_compiled, "vector"),
    "compiled_child": (_compiled_child, "vector"),
    "compiled_in_place": (_compiled_in_place, "image"),
    "checkpointed": (Checkpointed, "vector"),
    "in_place_input": (InPlaceInput, "vector"),
    "merged_batch_axis": (MergedBatch, "sequence"),
    "embedding_grad_by_freq": (GradByFrequency, "tokens"),
    "backward_couples_samples": (BackwardCoupled, "vector"),
    "spectral_norm_twice_train": (SpectralNormTwice, "vector"),
    "in_place_on_input": (InPlaceOnInput, "vector"),
    "parameter_table": (ParameterTable, "tokens"),
    "one_hot_input": (OneHot, "tokens"),
    "bool_input": (BoolMask, "bits"),
    "embedding_sparse": (SparseEmbedding, "tokens"),
}


def build(name: str, seed: int = 0) -> nn.Module:
    builder, _ = ZOO[name]
    torch.manual_seed(seed)
    model = builder().double()  # type: ignore[operator]
    return model.eval()


class OutlierHead(Head):
    """Samples with a large first feature also pass through the head's weight functionally:
    the extra path shows only on those samples (review 11, item 2)."""

    def forward(self, x):
        h = torch.tanh(self.body(x))
        y = self.head(h)
        return torch.where(x[:, :1] > 3.0, y + F.linear(h, self.head.weight), y)


class MixtureOfExperts(nn.Module):
    """Top-1 routing: each expert sees only the samples the gate sends it (item 7)."""

    def __init__(self, d: int = 6, experts: int = 3) -> None:
        super().__init__()
        self.gate = nn.Linear(d, experts)
        self.experts = nn.ModuleList([nn.Linear(d, d) for _ in range(experts)])
        self.head = nn.Linear(d, K)

    def forward(self, x):
        idx = self.gate(x).argmax(dim=-1)
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            sel = idx == e
            if sel.any():
                out = out.index_put((sel,), expert(x[sel]))
        return self.head(torch.tanh(out))


class MaxNormEmbedding(nn.Module):
    """nn.Embedding(max_norm=...) renormalises looked-up rows of its weight in place (item 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 4, max_norm=1.0)
        with torch.no_grad():
            self.emb.weight.mul_(3.0)
        self.out = nn.Linear(16, K)

    def forward(self, idx):
        return self.out(self.emb(idx).flatten(1))


class ClampsOwnWeight(nn.Module):
    """A user layer that clips its weight in place during forward."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(3 * torch.randn(6, K))

    def forward(self, x):
        with torch.no_grad():
            self.w.clamp_(-1.0, 1.0)
        return torch.tanh(x @ self.w)


class AttentionDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(4, 2, dropout=0.1, batch_first=True)
        self.out = nn.Linear(4, K)

    def forward(self, x):
        return self.out(self.att(x, x, x)[0].mean(dim=1))


class FunctionalDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.out = nn.Linear(6, 5), nn.Linear(5, K)

    def forward(self, x):
        return self.out(F.dropout(torch.tanh(self.a(x)), p=0.2, training=True))


class RandomReLU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.act, self.out = nn.Linear(6, 5), nn.RReLU(), nn.Linear(5, K)

    def forward(self, x):
        return self.out(self.act(self.a(x)))

    def train(self, mode: bool = True):
        super().train(mode)
        self.act.train(True)  # the random slope stays on under .eval()
        return self


def _lazy() -> nn.Module:
    return nn.Sequential(nn.LazyLinear(5), nn.Tanh(), nn.Linear(5, K))


# Models refused with a clear error (review 11): name → (builder, input kind, error type,
# pattern the message must match). The model must be left untouched by the refusing call.
REFUSED: dict[str, tuple[object, str, type, str]] = {
    "mixture_of_experts": (
        MixtureOfExperts, "vector", RuntimeError, r"routes samples.*implementation='jacobian'"
    ),
    "max_norm_embedding": (MaxNormEmbedding, "tokens", ValueError, r"max_norm.*in place"),
    "clamps_own_weight": (ClampsOwnWeight, "vector", ValueError, r"'w'.*in place"),
    "attention_dropout_train": (AttentionDropout, "sequence", ValueError, r"random.*eval\(\)"),
    "functional_dropout": (FunctionalDropout, "vector", ValueError, r"random.*eval\(\)"),
    "rrelu_train": (RandomReLU, "vector", ValueError, r"random.*eval\(\)"),
    "lazy_uninitialised": (_lazy, "vector", ValueError, r"uninitiali[sz]ed.*LazyLinear"),
}  # fmt: skip


def build_refused(name: str, seed: int = 0) -> nn.Module:
    builder = REFUSED[name][0]
    torch.manual_seed(seed)
    model = builder().double()  # type: ignore[operator]
    random = name in ("attention_dropout_train", "functional_dropout")
    return model.train() if random else model.eval()


def rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative Frobenius error of x against ref."""
    return ((x - ref).norm() / ref.norm()).item()


def reduce(full: torch.Tensor, compute: str) -> torch.Tensor:
    """The (n1, n2, k, k) kernel reduced to what ``compute`` returns."""
    if compute == "full":
        return full
    diag = full.diagonal(dim1=2, dim2=3)
    return diag.sum(-1) if compute == "trace" else diag
