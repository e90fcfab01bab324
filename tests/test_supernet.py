from __future__ import annotations

import numpy as np
import pytest
import torch

from edgenas.errors import CheckpointError
from edgenas.space import create_space
from edgenas.supernet import (
    Supernet,
    inherit_subnet,
    load_checkpoint,
    recalibrated,
    save_checkpoint,
    subnet_state_dict,
)


@pytest.mark.parametrize("fixture", ["tiny_mbv3", "tiny_spos"])
def test_single_path_equals_standalone_subnet_with_copied_weights(fixture, request, randomise_bn):
    space = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    supernet = Supernet(space, num_classes=7, in_channels=3, weights="separate")
    randomise_bn(supernet)
    supernet.eval()
    rng = np.random.default_rng(0)
    x = torch.randn(4, 3, 28, 28)
    for _ in range(4):
        arch = space.sample(rng)
        subnet = inherit_subnet(supernet, arch).eval()
        # the standalone net holds only the chosen blocks
        assert sum(p.numel() for p in subnet.parameters()) < sum(p.numel() for p in supernet.parameters())
        expected = subnet_state_dict(supernet, arch)
        assert set(subnet.state_dict()) == set(expected)
        with torch.no_grad():
            torch.testing.assert_close(subnet(x), supernet(x, arch), rtol=0, atol=0)


def test_other_paths_do_not_match(tiny_mbv3, randomise_bn):
    torch.manual_seed(0)
    supernet = Supernet(tiny_mbv3, 10, 1).eval()
    randomise_bn(supernet)
    a = tiny_mbv3.arch([0] * len(tiny_mbv3.layers))
    b = tiny_mbv3.arch([1] * len(tiny_mbv3.layers))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert not torch.allclose(supernet(x, a), supernet(x, b))


def test_recalibration_sets_exact_statistics_and_restores_buffers(tiny_mbv3, randomise_bn):
    torch.manual_seed(0)
    supernet = Supernet(tiny_mbv3, 10, 1)
    randomise_bn(supernet)
    arch = tiny_mbv3.sample(np.random.default_rng(0))
    before = {k: v.clone() for k, v in supernet.state_dict().items()}
    batches = [torch.randn(8, 1, 28, 28) + 3.0 for _ in range(3)]
    with recalibrated(supernet, arch, batches):
        stem_bn = supernet.stem[1]
        with torch.no_grad():
            conv_out = torch.cat([supernet.stem[0](b) for b in batches])
        # cumulative average of per-batch means == mean over all images (equal batch sizes)
        torch.testing.assert_close(stem_bn.running_mean, conv_out.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
        changed = supernet.state_dict()["stem.1.running_mean"]
        assert not torch.allclose(changed, before["stem.1.running_mean"])
    after = supernet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "recalibration leaked into the supernet"


def test_checkpoint_round_trip(tmp_path, tiny_spos):
    torch.manual_seed(0)
    net = Supernet(tiny_spos, 10, 1)
    path = save_checkpoint(tmp_path / "s.pt", net, {"epoch": 3})
    loaded, meta, state = load_checkpoint(path, tiny_spos)
    assert meta["epoch"] == 3 and state is None
    assert (tmp_path / "s.json").is_file()
    for k, v in net.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k])


def test_checkpoint_errors(tmp_path, tiny_mbv3, tiny_spos):
    net = Supernet(tiny_mbv3, 10, 1)
    path = save_checkpoint(tmp_path / "s.pt", net, {"epoch": 0})
    with pytest.raises(CheckpointError, match="was trained for space mbv3"):
        load_checkpoint(path, tiny_spos)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or not an edgenas checkpoint"):
        load_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="not an edgenas supernet checkpoint"):
        load_checkpoint(foreign)
    # a checkpoint whose tensors do not fit its declared space
    blob = torch.load(path, weights_only=True)
    blob["model"]["stem.0.weight"] = torch.zeros(1, 1, 1, 1)
    torch.save(blob, tmp_path / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not match its space"):
        load_checkpoint(tmp_path / "mismatch.pt")


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "meta": {"x": Evil()}}, path)
    with pytest.raises(CheckpointError, match="corrupt or not an edgenas checkpoint"):
        load_checkpoint(path)


def test_replace_classifier_keeps_backbone(tiny_mbv3):
    net = Supernet(tiny_mbv3, 10, 1)
    before = net.stem[0].weight.clone()
    net.replace_classifier(3)
    arch = tiny_mbv3.sample(np.random.default_rng(0))
    assert net(torch.randn(2, 1, 28, 28), arch).shape == (2, 3)
    assert torch.equal(before, net.stem[0].weight) and net.num_classes == 3


def test_spaces_report_space_mismatch_on_arch(tiny_mbv3, tiny_spos):
    from edgenas.errors import SpaceError

    net = Supernet(tiny_mbv3, 10, 1)
    with pytest.raises(SpaceError, match="belongs to space 'spos@v1'"):
        inherit_subnet(net, tiny_spos.sample(np.random.default_rng(0)))
    assert create_space("mbv3").config_hash() != tiny_mbv3.config_hash()
