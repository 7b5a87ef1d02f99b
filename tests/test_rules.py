"""One tiny hand-built model per op rule; every one is checked by the masked-original oracle
(float64: |err| <= 1e-10 x output scale; float32: <= 1e-5 x output scale)."""

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import prune_and_check

import fxprune


def report(gm):
    return gm.meta["fxprune"].report


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = x.view(-1, 16 * 5 * 5)
        return self.fc2(F.relu(self.fc1(x)))


def test_lenet_literal_view_rewritten():
    gm = prune_and_check(LeNet(), torch.randn(2, 1, 32, 32))
    assert gm.conv2.out_channels == 8
    assert gm.fc1.in_features == 8 * 25
    view = next(n for n in gm.graph.nodes if n.target == "view")
    assert view.args[1:] == (-1, 200)


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 16, 1)
        self.g = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.b = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.b(F.relu(self.g(F.relu(self.a(x)))))


def test_grouped_conv_keeps_different_positions_per_group():
    m = Grouped()
    with torch.no_grad():  # make group j prefer a different local channel than group 0
        for j in range(4):
            m.a.weight[4 * j:4 * j + 4] *= 0.01
            m.a.weight[4 * j + j] *= 1000
            m.a.weight[4 * j + (j + 1) % 4] *= 500
    gm = prune_and_check(m, torch.randn(2, 4, 8, 8))
    assert gm.g.groups == 4 and gm.g.in_channels == 8 and gm.g.weight.shape[1] == 2
    removed = gm.meta["fxprune"].plan.removed["a.weight[0]"]
    kept = sorted(set(range(16)) - set(removed))
    local = {tuple(sorted(k % 4 for k in kept if k // 4 == j)) for j in range(4)}
    assert len(local) > 1, "every group kept the same positions"
    assert [sum(1 for k in kept if k // 4 == j) for j in range(4)] == [2, 2, 2, 2]


class DepthwiseMultiplier(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.dw = nn.Conv2d(8, 16, 3, padding=1, groups=8)
        self.bn = nn.BatchNorm2d(16)
        self.b = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.b(self.bn(self.dw(self.a(x))))


def test_depthwise_with_channel_multiplier():
    gm = prune_and_check(DepthwiseMultiplier(), torch.randn(2, 3, 8, 8))
    assert gm.dw.groups == gm.dw.in_channels == 4
    assert gm.dw.out_channels == 8 and gm.bn.num_features == 8


class Shuffle(nn.Module):
    def __init__(self, form):
        super().__init__()
        self.form = form
        self.a = nn.Conv2d(3, 12, 1)
        self.b = nn.Conv2d(12, 5, 1)

    def forward(self, x):
        x = self.a(x)
        if self.form == "functional":
            x = F.channel_shuffle(x, 3)
        elif self.form == "size":
            n, c, h, w = x.size()
            x = x.view(n, 3, c // 3, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        else:
            x = x.view(2, 3, 4, 6, 6).transpose(1, 2).reshape(2, 12, 6, 6)
        return self.b(x)


def _skewed_shuffle(form):
    m = Shuffle(form)
    with torch.no_grad():  # block 0 prefers its first channels, block 1 its last ones
        m.a.weight[:] = m.a.weight.abs() + 0.1
        m.a.weight[0:2] *= 50
        m.a.weight[6:8] *= 50
        m.a.weight[8:10] *= 50
    return m


def test_channel_shuffle_all_forms_exact_with_free_positions():
    for form in ("functional", "size", "literal"):
        gm = prune_and_check(_skewed_shuffle(form), torch.randn(2, 3, 6, 6))
        assert gm.a.out_channels == 6 and gm.b.in_channels == 6
        kept = sorted(set(range(12)) - set(gm.meta["fxprune"].plan.removed["a.weight[0]"]))
        assert kept == [0, 1, 6, 7, 8, 9], (form, kept)  # different positions per block


def test_literal_shuffle_view_rewritten():
    gm = prune_and_check(_skewed_shuffle("literal"), torch.randn(2, 3, 6, 6))
    view = next(n for n in gm.graph.nodes if n.target == "view")
    assert view.args[1:] == (2, 3, 2, 6, 6)


class LiteralSplit(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 1)
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b2 = nn.Conv2d(24, 4, 1)

    def forward(self, x):
        p, q = torch.split(self.a(x), [8, 24], 1)
        return self.b1(p) + self.b2(q)


def test_literal_split_sizes_rewritten():
    gm = prune_and_check(LiteralSplit(), torch.randn(2, 3, 5, 5))
    split = next(n for n in gm.graph.nodes if n.target is torch.split)
    assert split.args[1] == [4, 12]


class CatSplitCat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(16, 16, 1)
        self.d = nn.Conv2d(8, 8, 1)
        self.e = nn.Conv2d(16, 3, 1)

    def forward(self, x):
        y = torch.cat([self.a(x), self.b(x)], 1)
        y = y + self.c(y)
        p, q = y.chunk(2, dim=1)
        z = torch.cat([p + self.d(q), q], 1)
        return self.e(z + y)


def test_nested_cat_split_cat_with_residuals():
    gm = prune_and_check(CatSplitCat(), torch.randn(2, 3, 4, 4))
    assert report(gm).params_after < report(gm).params_before


class SE(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.b = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        x = F.relu(self.a(x))
        b, c = x.shape[0], x.shape[1]
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))
        return self.b(x * s.view(b, c, 1, 1))


def test_se_broadcast_mul():
    gm = prune_and_check(SE(), torch.randn(2, 3, 6, 6))
    assert gm.a.out_channels == gm.fc2.out_channels == gm.b.in_channels == 8


class SliceBranches(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 32, 1)
        self.b1 = nn.Conv2d(16, 4, 1)
        self.b2 = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.a(x)
        return self.b1(y[:, :16]) + self.b2(y[:, 16:])


def test_getitem_slice_branches():
    gm = prune_and_check(SliceBranches(), torch.randn(2, 3, 4, 4))
    assert gm.a.out_channels == 16 and gm.b1.in_channels == 8 and gm.b2.in_channels == 8


class CatSpatial(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 8, 1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(torch.cat([self.a(x), self.b(x)], dim=2))


def test_cat_along_spatial_axis_couples_channels_only():
    gm = prune_and_check(CatSpatial(), torch.randn(2, 3, 4, 4))
    assert gm.a.out_channels == gm.b.out_channels == gm.c.in_channels == 4


class CBAM(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.sp = nn.Conv2d(2, 1, 3, padding=1)
        self.b = nn.Conv2d(8, 4, 1)
        self.c = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.a(x)
        att = torch.cat([y.mean(1, keepdim=True), torch.amax(y, 1, keepdim=True)], 1)
        return self.c(F.relu(self.b(y * torch.sigmoid(self.sp(att)))))


def test_channel_mean_max_frozen_and_reported():
    gm = prune_and_check(CBAM(), torch.randn(2, 3, 5, 5))
    assert gm.a.out_channels == 8  # read by a channel mean: frozen
    assert gm.b.out_channels == 2  # the rest still prunes
    reasons = " ".join(f.message for f in report(gm).frozen)
    assert "reduced over by mean" in reasons and "amax" in reasons


class GN(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 1)
        self.gn = nn.GroupNorm(4, 16)
        self.b = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        return self.b(F.relu(self.gn(self.a(x))))


def test_group_norm_removes_whole_groups():
    gm = prune_and_check(GN(), torch.randn(2, 3, 5, 5))
    assert gm.gn.num_groups == 2 and gm.gn.num_channels == 8 and gm.a.out_channels == 8


class Functional(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3))
        self.b1 = nn.Parameter(torch.randn(8))
        self.w2 = nn.Parameter(torch.randn(5, 8 * 4 * 4))

    def forward(self, x):
        y = F.relu(F.conv2d(x, self.w1, self.b1, padding=1))
        return F.linear(torch.flatten(y, 1), self.w2)


def test_functional_conv_and_linear_on_parameters():
    gm = prune_and_check(Functional(), torch.randn(2, 3, 4, 4))
    assert gm.w1.shape == (4, 3, 3, 3) and gm.b1.shape == (4,) and gm.w2.shape == (5, 64)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv1d(3, 8, 3)
        self.inorm = nn.InstanceNorm1d(8, affine=True)
        self.act = nn.PReLU(8)
        self.up = nn.ConvTranspose1d(8, 6, 2, stride=2)
        self.bn = nn.BatchNorm1d(6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        y = self.bn(self.up(self.act(self.inorm(self.a(x)))))
        return self.fc(y.mean(-1))


def test_conv1d_instance_norm_prelu_conv_transpose_bn1d():
    gm = prune_and_check(Mixed(), torch.randn(2, 3, 10))
    assert gm.a.out_channels == 4 and gm.act.num_parameters == 4 and gm.up.out_channels == 3
    assert gm.inorm.num_features == 4 and gm.bn.num_features == 3


class Opaque(nn.Module):
    def forward(self, x):
        return x.flip(1)


class WithOpaque(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.op = Opaque()
        self.b = nn.Conv2d(8, 8, 1)
        self.c = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.c(F.relu(self.b(self.op(self.a(x)))))


def test_unknown_op_freezes_never_guesses():
    gm = prune_and_check(WithOpaque(), torch.randn(2, 3, 4, 4), leaf_modules=[Opaque])
    assert gm.a.out_channels == 8 and gm.b.in_channels == 8  # flip is not elementwise
    assert gm.b.out_channels == 4
    assert any("no channel rule for Opaque" in f.message for f in report(gm).frozen)


def test_stochastic_depth_dropout_identity_rules():
    from torchvision.ops import StochasticDepth

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.sd = StochasticDepth(0.2, "row")
            self.drop = nn.Dropout(0.1)
            self.id = nn.Identity()
            self.b = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = self.a(x)
            return self.b(self.id(self.drop(y + self.sd(y))))

    gm = prune_and_check(Net(), torch.randn(2, 3, 4, 4))
    assert gm.a.out_channels == 4


def test_expand_and_repeat_literals():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.g = nn.Conv2d(3, 1, 1)
            self.b = nn.Conv2d(16, 2, 1)

        def forward(self, x):
            y = self.a(x)
            gate = torch.sigmoid(self.g(x)).expand(2, 8, 4, 4)
            return self.b((y * gate).repeat(1, 2, 1, 1))

    gm = prune_and_check(Net(), torch.randn(2, 3, 4, 4))
    expand = next(n for n in gm.graph.nodes if n.target == "expand")
    assert expand.args[1:] == (2, 4, 4, 4)
    assert gm.b.in_channels == 8


def test_analyze_lists_groups_readably():
    graph = fxprune.analyze(CatSplitCat().eval(), torch.randn(2, 3, 4, 4))
    text = str(graph)
    assert "prunable groups" in text and "a.weight[0]" in text
    assert all(g.size > 0 for g in graph.groups)
    assert np.unique(np.concatenate([g.units for g in graph.groups])).size == sum(
        g.size for g in graph.groups)


class Unflatten(nn.Module):
    """MLP -> conv: a split reshape whose channel factor feeds a conv (spatial factors fixed)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16 * 2 * 2)
        self.pool = nn.MaxPool2d(2, 1)
        self.conv = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y = self.fc(x).view(-1, 16, 2, 2)
        return self.conv(self.pool(y) + 1).flatten(1)


def test_split_reshape_into_conv_channels():
    gm = prune_and_check(Unflatten(), torch.randn(3, 8))
    assert gm.fc.out_features == 32 and gm.conv.in_channels == 8
    view = next(n for n in gm.graph.nodes if n.target == "view")
    assert view.args[1:] == (-1, 8, 2, 2)


def test_softmax_over_channels_frozen_glu_pairs_halves():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.b = nn.Conv2d(3, 16, 1)
            self.c = nn.Conv2d(16, 2, 1)

        def forward(self, x):
            att = torch.softmax(self.a(x), dim=1).sum(1, keepdim=True)
            y = F.glu(self.b(x), dim=1)  # 16 -> 8: channel i pairs with i + 8
            y = torch.softmax(y, dim=-1) * att  # softmax over a spatial dim: channels pass
            return self.c(torch.cat([y, y], 1))

    gm = prune_and_check(Net(), torch.randn(2, 3, 4, 4))
    assert gm.a.out_channels == 8  # softmax over channels mixes them
    assert gm.b.out_channels == 8 and gm.c.in_channels == 8


def test_channels_last_permute_linear_movedim():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, padding=1, groups=1)
            self.fc = nn.Linear(8, 12)
            self.b = nn.Conv2d(12, 4, 1)
            self.c = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            y = self.fc(self.a(x).permute(0, 2, 3, 1))
            y = F.gelu(y).permute(0, 3, 1, 2)
            z = torch.movedim(self.b(y), 1, -1).contiguous()
            return self.c(z.transpose(1, 3).transpose(2, 3))

    gm = prune_and_check(Net(), torch.randn(2, 3, 5, 5))
    assert gm.a.out_channels == 4 and gm.fc.out_features == 6 and gm.b.out_channels == 2


def test_narrow_stack_unbind_where_interpolate_squeeze():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 16, 1)
            self.b = nn.Conv2d(3, 8, 1)
            self.c = nn.Conv2d(8, 8, 1)
            self.d = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = torch.narrow(self.a(x), 1, 4, 8)  # channels 4..11 of a
            z = self.b(x)
            p, q = torch.stack([y, z], 0).unbind(0)
            w = torch.where(p > 0, p - q, q / 2).unsqueeze(2).squeeze(2)
            w = F.interpolate(self.c(w), scale_factor=2, mode="nearest")
            return self.d(w)

    gm = prune_and_check(Net(), torch.randn(2, 3, 4, 4))
    narrow = next(n for n in gm.graph.nodes if n.target is torch.narrow)
    assert narrow.args[3] == 4 and gm.b.out_channels == 4 and gm.d.in_channels == 4


def test_conv3d_and_depthwise_conv_transpose2d():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv3d(2, 8, 1)
            self.b = nn.Conv3d(8, 2, 1)
            self.c = nn.Conv2d(3, 6, 1)
            self.dw = nn.ConvTranspose2d(6, 6, 2, stride=2, groups=6)
            self.e = nn.Conv2d(6, 2, 1)

        def forward(self, v, x):
            return self.b(F.relu(self.a(v))).sum(), self.e(self.dw(self.c(x)))

    gm = prune_and_check(Net(), (torch.randn(1, 2, 3, 3, 3), torch.randn(1, 3, 4, 4)))
    assert gm.a.out_channels == 4 and gm.dw.groups == 3 and gm.dw.out_channels == 3


def test_functional_group_norm_and_prelu():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 1)
            self.gw = nn.Parameter(torch.rand(8) + 0.5)
            self.pw = nn.Parameter(torch.rand(8))
            self.b = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            y = F.group_norm(self.a(x), 4, self.gw)
            return self.b(F.prelu(y, self.pw))

    gm = prune_and_check(Net(), torch.randn(2, 3, 4, 4))
    gn = next(n for n in gm.graph.nodes if n.target is F.group_norm)
    assert gn.args[1] == 2 and gm.gw.shape == (4,) and gm.pw.shape == (4,)


class PixelShuffleNet(nn.Module):
    """conv -> pixel_shuffle(2) -> conv; and conv -> pixel_unshuffle(2) -> conv."""

    def __init__(self, inverse: bool):
        super().__init__()
        self.inverse = inverse
        self.a = nn.Conv2d(3, 4 if inverse else 16, 3, padding=1)
        self.b = nn.Conv2d(16 if inverse else 4, 5, 1)

    def forward(self, x):
        y = F.relu(self.a(x))
        y = F.pixel_unshuffle(y, 2) if self.inverse else F.pixel_shuffle(y, 2)
        return self.b(y)


def test_pixel_shuffle_removes_an_output_channel_with_its_r2_inputs():
    gm = prune_and_check(PixelShuffleNet(False), torch.randn(2, 3, 6, 6), ratio=0.5)
    assert (gm.a.out_channels, gm.b.in_channels) == (8, 2)  # 4 units of r^2 = 4 channels
    kept = np.setdiff1d(np.arange(16), gm.meta["fxprune"].plan.removed["a.weight[0]"])
    assert (kept.reshape(-1, 4) == kept.reshape(-1, 4)[:, :1] + np.arange(4)).all()


def test_pixel_unshuffle_removes_an_input_channel_with_its_r2_outputs():
    gm = prune_and_check(PixelShuffleNet(True), torch.randn(2, 3, 6, 6), ratio=0.5)
    assert (gm.a.out_channels, gm.b.in_channels) == (2, 8)


def test_pixel_shuffle_module_form():
    m = nn.Sequential(nn.Conv2d(3, 16, 1), nn.PixelShuffle(2), nn.Conv2d(4, 2, 1))
    gm = prune_and_check(m, torch.randn(1, 3, 4, 4), ratio=0.5)
    assert gm.get_submodule("0").out_channels == 8


def test_grouped_conv_with_one_output_per_group_keeps_its_outputs():
    # found by the fuzzer: removing a group's only output left groups=4 with 2 outputs
    m = nn.Sequential(nn.Conv2d(3, 12, 1), nn.ReLU(), nn.Conv2d(12, 4, 3, padding=1, groups=4),
                      nn.ReLU(), nn.Conv2d(4, 2, 1))
    gm = prune_and_check(m, torch.randn(2, 3, 6, 6), ratio=0.5)
    assert report(gm).fallbacks == []
    assert (gm.get_submodule("2").out_channels, gm.get_submodule("2").in_channels) == (4, 8)


def test_grouped_conv_groups_never_lose_every_input():
    # found by the fuzzer: GroupNorm ties each group of 4 channels into one unit, so a unit
    # is a whole group of the grouped conv; removing it emptied that group
    m = nn.Sequential(nn.Conv2d(3, 16, 1), nn.GroupNorm(4, 16), nn.ReLU(),
                      nn.Conv2d(16, 12, 3, padding=1, groups=4), nn.ReLU(), nn.Conv2d(12, 2, 1))
    gm = prune_and_check(m, torch.randn(2, 3, 6, 6), ratio=0.75)
    assert report(gm).fallbacks == []
    assert gm.get_submodule("3").groups == 4 and gm.get_submodule("3").in_channels == 16


class ShuffleOfSingles(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        return self.b(F.channel_shuffle(F.relu(self.a(x)), 4))


def test_channel_shuffle_losing_whole_groups_shuffles_fewer_groups():
    # found by the fuzzer: one channel per group, so whole groups go; groups stayed at 4
    gm = prune_and_check(ShuffleOfSingles(), torch.randn(2, 3, 6, 6), ratio=0.5)
    assert report(gm).fallbacks == []
    shuffle = next(n for n in gm.graph.nodes if n.target is F.channel_shuffle)
    assert gm.a.out_channels == 2 and shuffle.args[1] == 2
