"""Backbones: each named architecture builds without weights and has the stage strides it reports."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from wsss.models.backbones import build_backbone


@pytest.mark.parametrize("name", ["small", "resnet18", "resnet50", "resnet18-os8", "resnet50-os8"])
def test_backbone_stage_outputs_match_reported_channels_and_strides(name: str) -> None:
    net = build_backbone(name).eval()
    with torch.no_grad():
        feats = net(torch.zeros(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == net.channels
    assert [64 // f.shape[-1] for f in feats] == net.strides


def test_resnet18_keeps_output_stride_16_without_dilation() -> None:
    # torchvision's BasicBlock cannot dilate: the last stage must lose its stride another way
    net = build_backbone("resnet18")
    assert net.output_stride == 16
    assert net.stages[3][0].conv1.stride == (1, 1)


def test_deeper_small_backbone_keeps_strides_and_the_one_block_layout() -> None:
    deep = build_backbone("small", blocks=(2, 2, 2, 2)).eval()
    with torch.no_grad():
        feats = deep(torch.zeros(1, 3, 64, 64))
    assert [64 // f.shape[-1] for f in feats] == deep.strides == [4, 8, 8, 8]
    n_params = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert n_params(deep) > 1.8 * n_params(build_backbone("small"))
    # one block per stage (the default) keeps the parameter names of runs saved before `blocks` existed
    assert "stages.3.conv2.weight" in build_backbone("small").state_dict()


def test_small_backbone_loads_the_weights_of_an_earlier_run(tmp_path) -> None:
    from wsss.methods.base import build_method

    trained = build_method("cam", 8, "small")
    torch.nn.init.normal_(trained.backbone.stem[0].weight)  # anything but the fresh initialisation
    torch.save(trained.state_dict(), tmp_path / "model.pt")  # a whole method, as runs save it
    net = build_backbone("small", pretrained=tmp_path / "model.pt")
    for k, v in trained.backbone.state_dict().items():
        torch.testing.assert_close(net.state_dict()[k], v)
    torch.save(trained.backbone.state_dict(), tmp_path / "backbone.pt")  # or just the backbone
    torch.testing.assert_close(build_backbone("small", pretrained=tmp_path / "backbone.pt").stem[0].weight,
                               trained.backbone.stem[0].weight)
    with pytest.raises(ValueError, match="do not fit"):
        build_backbone("small", pretrained=tmp_path / "model.pt", widths=(16, 32, 64, 64))
    with pytest.raises(ValueError, match="do not fit"):
        build_backbone("small", pretrained=tmp_path / "model.pt", blocks=(2, 2, 2, 2))
    # Asked to, a deeper net takes the weights in each stage's first block and starts the rest fresh.
    deep = build_backbone("small", pretrained=tmp_path / "model.pt", blocks=(2, 1, 2, 2), fresh_extra_blocks=True)
    torch.testing.assert_close(deep.stages[0][0].conv1.weight, trained.backbone.stages[0].conv1.weight)
    torch.testing.assert_close(deep.stages[1].conv1.weight, trained.backbone.stages[1].conv1.weight)
    assert not torch.equal(deep.stages[3][1].conv1.weight, trained.backbone.stages[3].conv1.weight)
    with pytest.raises(ValueError, match="do not fit"):  # still no other widths
        build_backbone("small", pretrained=tmp_path / "model.pt", widths=(16, 32, 64, 64), fresh_extra_blocks=True)
    with pytest.raises(FileNotFoundError):
        build_backbone("small", pretrained=tmp_path / "missing.pt")


def test_imagenet_weights_come_from_torchvisions_cache_without_a_download(tmp_path: Path, monkeypatch) -> None:
    """`pretrained="imagenet"` reads torchvision's cache ($TORCH_HOME/hub/checkpoints) when the file is
    there, so an offline machine needs only that file; the test writes one and checks it is used."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    url = torchvision.models.get_weight("ResNet18_Weights.IMAGENET1K_V1").url
    reference = torchvision.models.resnet18(weights=None).state_dict()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(reference, cache / url.rsplit("/", 1)[1])

    def no_network(*args, **kwargs):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    net = build_backbone("resnet18", "imagenet")
    assert torch.equal(net.stages[0][0].conv1.weight, reference["layer1.0.conv1.weight"])


@pytest.mark.parametrize("name", ["resnet18-os8", "resnet50-os8"])
def test_output_stride_8_keeps_the_resolution_of_the_last_two_stages(name: str) -> None:
    net = build_backbone(name).eval()
    assert net.strides == [4, 8, 8, 8] and net.output_stride == 8
    with torch.no_grad():
        assert net(torch.zeros(1, 3, 96, 128))[-1].shape[-2:] == (12, 16)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet50-os4")


@pytest.mark.parametrize("method,backbone,options", [("cam", "small", {}), ("cam", "resnet18", {}),
                                                     ("shape_cues", "small", {}), ("sance", "small", {}),
                                                     ("cam", "small", {"norm": "gn"})])
def test_folded_batch_norms_give_the_same_maps_and_leave_the_model_alone(method, backbone, options) -> None:
    from wsss.methods.base import build_method
    from wsss.models.fusion import folded_for_inference

    torch.manual_seed(0)
    model = build_method(method, 5, backbone, backbone_options=options)
    for m in model.modules():  # statistics far from the identity, so that a missed fold shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    folded = folded_for_inference(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = model.class_maps(x), folded.class_maps(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
    bn_left = [m for bb in folded.modules() if bb.__class__.__name__ == "Backbone" for m in bb.modules()
               if isinstance(m, torch.nn.BatchNorm2d)]
    assert not bn_left, "every batch norm of the backbone is folded"
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items()), "the original is unchanged"


def test_wsss_starts_without_importing_torchvision() -> None:
    """Importing torchvision pulls in torch._dynamo: 2-3 s of the start of every process that does
    not train (a kernel on cached runs, the CLI). Only the ResNet and DeepLab v3 paths need it, and
    they import it when used."""
    code = ("import sys, wsss.cli, wsss.experiment, wsss.compare, wsss.claims, wsss.ceiling, wsss.viz, "
            "wsss.stages.final; print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
