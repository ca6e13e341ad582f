import pytest
import torch

from models.losses import (cluster_assignments, flow_identity_loss, gangealing_cluster_loss,
                           nearest_cluster, select_assigned, total_variation_loss)


def ramp_flow(slope, n=2, size=6):
    """Flow whose x component grows by ``slope`` per column; y component zero."""
    flow = torch.zeros(n, size, size, 2)
    flow[..., 0] = slope * torch.arange(size, dtype=torch.float32)
    return flow


def test_tv_is_zero_for_a_constant_flow():
    flow = torch.full((2, 5, 7, 2), 0.3)
    flow[1] = -2.0
    assert total_variation_loss(flow).item() == 0.0
    assert torch.equal(total_variation_loss(flow, reduce_batch=False), torch.zeros(2))


def test_tv_of_a_ramp_in_the_quadratic_and_linear_regions():
    # Horizontal differences are `slope` in one of two components, vertical ones are 0.
    assert total_variation_loss(ramp_flow(0.1)).item() == pytest.approx(0.5 * 0.1 ** 2 / 2)
    assert total_variation_loss(ramp_flow(3.0)).item() == pytest.approx((3.0 - 0.5) / 2)
    # The same ramp along y gives the same value.
    vertical = ramp_flow(0.1).transpose(1, 2).flip(-1).contiguous()
    assert total_variation_loss(vertical).item() == pytest.approx(0.5 * 0.1 ** 2 / 2)


def test_tv_rejects_channel_first_flows():
    with pytest.raises(ValueError, match='N, H, W, 2'):
        total_variation_loss(torch.zeros(2, 2, 8, 8))


def test_flow_identity_is_the_mean_square():
    flow = torch.zeros(2, 4, 4, 2)
    flow[0] = 0.5
    assert flow_identity_loss(flow).item() == pytest.approx(0.125)
    assert flow_identity_loss(flow, reduce_batch=False).tolist() == pytest.approx([0.25, 0.0])


def test_single_head_loss_combines_weighted_terms():
    distances = torch.tensor([0.2, 0.4])
    flow = ramp_flow(0.1)
    terms, _ = gangealing_cluster_loss(distances, flow, 2, 1, False, tv_weight=10.0, flow_identity_weight=2.0)
    tv, identity = total_variation_loss(flow), flow_identity_loss(flow)
    assert terms.perceptual.item() == pytest.approx(0.3)
    assert terms.total.item() == pytest.approx(0.3 + 10 * tv.item() + 2 * identity.item())
    similarity_only, _ = gangealing_cluster_loss(distances, None, 2, 1, False, tv_weight=10.0,
                                                 flow_identity_weight=2.0)
    assert similarity_only.total.item() == pytest.approx(0.3)
    assert similarity_only.total_variation.item() == 0.0


def test_nearest_cluster_without_flips_takes_row_minimum():
    # batch 3, heads 2: image-major layout.
    distances = torch.tensor([0.5, 0.2,
                              0.1, 0.9,
                              0.7, 0.3])
    values, indices = nearest_cluster(distances, batch=3, num_heads=2)
    assert values.tolist() == pytest.approx([0.2, 0.1, 0.3])
    assert indices.tolist() == [1, 0, 1]
    loss, chosen = cluster_assignments(distances, 3, 2)
    assert loss.item() == pytest.approx(0.2)
    assert chosen.tolist() == [1, 0, 1]


def test_nearest_cluster_with_flips_considers_mirrors():
    # mirror-major: first the 2 images x 2 heads unmirrored, then mirrored.
    distances = torch.tensor([0.5, 0.6, 0.2, 0.9,
                              0.4, 0.1, 0.8, 0.3])
    values, indices = nearest_cluster(distances, batch=2, num_heads=2, flips=True)
    assert values.tolist() == pytest.approx([0.1, 0.2])
    assert indices.tolist() == [3, 0]  # image 0: mirrored, head 1; image 1: unmirrored, head 0


def test_nearest_cluster_checks_layout_size():
    with pytest.raises(ValueError, match='expected 8'):
        nearest_cluster(torch.zeros(6), batch=2, num_heads=2, flips=True)


def test_select_assigned_picks_the_chosen_pair_rows():
    batch, heads = 2, 3
    per_pair = torch.arange(2 * batch * heads).float().view(-1, 1)  # value = row index
    indices = torch.tensor([4, 1])  # image 0: mirrored head 1, image 1: unmirrored head 1
    rows = select_assigned(per_pair, indices, batch, heads, flips=True).flatten().tolist()
    # row = (mirror * batch + image) * heads + head
    assert rows == [(1 * batch + 0) * heads + 1, (0 * batch + 1) * heads + 1]


def test_cluster_loss_regularises_only_the_assigned_flows():
    batch, heads = 2, 3
    distances = torch.tensor([0.9, 0.3, 0.8,
                              0.2, 0.7, 0.6], requires_grad=True)
    flows = torch.randn(batch * heads, 4, 4, 2, requires_grad=True)
    terms, indices = gangealing_cluster_loss(distances, flows, batch, heads, flips=False,
                                             tv_weight=5.0, flow_identity_weight=1.0)
    assert indices.tolist() == [1, 0]
    assert terms.perceptual.item() == pytest.approx(0.25)
    chosen = flows.detach()[[1, 3]]
    assert terms.total_variation.item() == pytest.approx(total_variation_loss(chosen).item())
    assert terms.flow_identity.item() == pytest.approx(flow_identity_loss(chosen).item())
    terms.total.backward()
    flow_grad_norms = flows.grad.flatten(1).norm(dim=1)
    assert (flow_grad_norms[[1, 3]] > 0).all()
    assert torch.equal(flow_grad_norms[[0, 2, 4, 5]], torch.zeros(4))
    assert distances.grad.tolist() == pytest.approx([0, 0.5, 0, 0.5, 0, 0])
