"""--cluster K as a selection: with a cluster classifier the applications keep the images it assigns to K."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from models.cluster_classifier import ResnetClassifier
from tests.test_cluster_classifier import biased_classifier, run, two_head_transformer
from utils.checkpoint import save_checkpoint

SIZE = 32
# float32 trunks: the outputs are compared with the transformer run here in float32.
COMMON = ('--real_size', SIZE, '--batch', 4, '--num_workers', 0, '--device', 'cpu', '--precision', 'fp32')


def splitting_classifier():
    """A classifier whose (random, large) logits send the fixture's images to both clusters."""
    torch.manual_seed(3)
    classifier = ResnetClassifier(16, channel_multiplier=0.5, num_heads=4, supersize=SIZE, max_channels=16)
    with torch.no_grad():
        classifier.to_logits.weight.mul_(200)
    return classifier.eval()


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp('selection')
    data = root / 'data'
    result = run('prepare_data.py', '--synthetic', '--size', SIZE, '--max_images', 8, '--out', data)
    assert result.returncode == 0, result.stderr
    t, args = two_head_transformer()
    classifier = splitting_classifier()
    paths = {
        'split': save_checkpoint({'t_ema': t.state_dict(), 'classifier': classifier.state_dict(), 'args': args},
                                 str(root / 'split.pt')),
        'one_sided': save_checkpoint({'t_ema': t.state_dict(), 'classifier': biased_classifier(3).state_dict(),
                                      'args': args}, str(root / 'one_sided.pt')),
        'plain': save_checkpoint({'t_ema': t.state_dict(), 'args': args}, str(root / 'plain.pt')),
    }
    from datasets.lmdb_dataset import MultiResolutionDataset
    dataset = MultiResolutionDataset(str(data), SIZE)
    images = torch.stack([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        clusters = classifier.assign(images) % 2
    assert 0 < int(clusters.sum()) < len(images)  # both clusters have images
    return dict(root=root, data=data, t=t.eval(), classifier=classifier, images=images, clusters=clusters, **paths)


def read_png(path):
    return np.asarray(Image.open(path).convert('RGB')).astype(float)


def to_uint8(image):
    return ((image.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().numpy()


def test_propagate_to_images_keeps_the_cluster_of_the_classifier(world, tmp_path):
    cluster = 1
    out = tmp_path / 'out'
    # A label naming cluster 0 reads the chosen cluster's own file: only that one exists.
    label = np.zeros((SIZE, SIZE, 4), np.uint8)
    label[8:20, 8:20] = (255, 0, 0, 255)
    Image.fromarray(label).save(tmp_path / f'mask_cluster{cluster}.png')
    result = run('-m', 'applications.propagate_to_images', '--ckpt', world['split'], '--real_data_path',
                 world['data'], '--cluster', cluster, '--out', out, '--save_individual_images', '--n_mean', 100,
                 '--label_path', tmp_path / 'mask_cluster0.png', '--resolution', SIZE, '--objects', *COMMON)
    assert result.returncode == 0, result.stderr
    chosen = torch.nonzero(world['clusters'] == cluster).reshape(-1)
    assert f'assigns {chosen.numel()} of 8 images to cluster {cluster}' in result.stdout
    written = sorted(os.listdir(out / 'congealed_images'))
    assert written == [f'{i:03}.png' for i in range(chosen.numel())]
    images = world['images'][chosen]
    with torch.no_grad():
        inputs, _ = world['classifier'].run_flip_target(images, cluster)
        expected = world['t'](inputs, output_resolution=SIZE, padding_mode='border',
                              warp_policy=torch.full((len(images),), cluster, dtype=torch.long))
    for i in range(len(images)):
        assert np.abs(read_png(out / 'congealed_images' / f'{i:03}.png') - to_uint8(expected[i])).max() <= 1
        assert np.abs(read_png(out / 'input_images' / f'{i:03}.png') - to_uint8(images[i])).max() <= 1
    # The average is the cluster's: the mean of its congealed images.
    average = read_png(out / 'average.png')
    mean = expected.mean(0)
    stretched = (mean - mean.min()) / (mean.max() - mean.min()) * 255
    assert np.abs(average - stretched.permute(1, 2, 0).numpy()).mean() < 2
    assert os.path.isfile(out / 'propagated_grid.png')


def test_congeal_dataset_and_vis_correspondence_select_the_cluster(world, tmp_path):
    cluster = 1
    chosen = torch.nonzero(world['clusters'] == cluster).reshape(-1)
    out = tmp_path / 'congealed'
    result = run('-m', 'applications.congeal_dataset', '--ckpt', world['split'], '--real_data_path', world['data'],
                 '--cluster', cluster, '--out', out, '--output_resolution', SIZE, '--min_effective_resolution', 0,
                 '--max_out_of_bounds', 1, *COMMON)
    assert result.returncode == 0, result.stderr
    assert torch.equal(torch.load(out / 'dataset_indices.pt', weights_only=True), chosen)

    # --dset_indices count the cluster's images: one past them is out of range.
    result = run('-m', 'applications.vis_correspondence', '--ckpt', world['split'], '--real_data_path',
                 world['data'], '--cluster', cluster, '--dset_indices', chosen.numel(), '--out', tmp_path / 'v',
                 '--length', 2, *COMMON)
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and f'the dataset has {chosen.numel()} images' in line
    result = run('-m', 'applications.vis_correspondence', '--ckpt', world['split'], '--real_data_path',
                 world['data'], '--cluster', cluster, '--dset_indices', 0, '--out', tmp_path / 'v', '--length', 2,
                 *COMMON)
    assert result.returncode == 0, result.stderr
    assert os.path.isfile(tmp_path / 'v' / 'smoothly_congeal.mp4')


def test_without_a_classifier_cluster_forces_the_head_with_a_note(world, tmp_path):
    result = run('-m', 'applications.propagate_to_images', '--ckpt', world['plain'], '--real_data_path',
                 world['data'], '--cluster', 0, '--out', tmp_path / 'out', '--save_individual_images', *COMMON)
    assert result.returncode == 0, result.stderr
    assert 'note: the checkpoint has no cluster classifier, so every image is aligned by head 0' in result.stdout
    assert len(os.listdir(tmp_path / 'out' / 'congealed_images')) == 8


def test_an_empty_cluster_is_refused(world, tmp_path):
    # This classifier puts every image in cluster 1.
    result = run('-m', 'applications.congeal_dataset', '--ckpt', world['one_sided'], '--real_data_path',
                 world['data'], '--cluster', 0, '--out', tmp_path / 'c', '--output_resolution', SIZE, *COMMON)
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and line.startswith('error: the cluster classifier assigns none of the 8 images '
                                                      'to cluster 0')
    assert 'Traceback' not in result.stderr and not os.path.exists(tmp_path / 'c')


def test_mixed_reality_lets_the_classifier_pick_each_frames_cluster(world, tmp_path):
    for cluster, colour in ((0, (255, 0, 0)), (1, (0, 0, 255))):
        label = np.zeros((SIZE, SIZE, 4), np.uint8)
        label[8:12, 8 + 8 * cluster:12 + 8 * cluster] = (*colour, 255)
        Image.fromarray(label).save(tmp_path / f'mask_cluster{cluster}.png')
    common = ('--real_data_path', world['data'], '--label_path', tmp_path / 'mask_cluster0.png', '--objects',
              '--resolution', SIZE, '--save_correspondences', *COMMON)
    result = run('-m', 'applications.mixed_reality', '--ckpt', world['split'], '--out', tmp_path / 'mr', *common)
    assert result.returncode == 0, result.stderr
    record = torch.load(tmp_path / 'mr' / 'video_data' / 'dense_correspondences_extras.pt', weights_only=True)
    points = torch.load(tmp_path / 'mr' / 'video_data' / 'dense_correspondences.pt', weights_only=True)
    images, clusters = world['images'], world['clusters']
    assert torch.equal(record['active_cluster'], clusters)
    with torch.no_grad():
        _, _, _, mirrored = world['classifier'].run_flip(images)
    assert torch.equal(record['mirrored'], mirrored[:, None])
    # Each frame carries its own cluster's label points; the other cluster's are NaN.
    owner = record['cluster']
    assert points.shape == (8, 32, 2) and torch.equal(owner, torch.tensor([0] * 16 + [1] * 16))
    for frame in range(8):
        mine = owner == clusters[frame]
        assert torch.isfinite(points[frame, mine]).all() and torch.isnan(points[frame, ~mine]).all()

    # Fixed clusters: every frame gets both labels, mirrored as the classifier says for each cluster.
    result = run('-m', 'applications.mixed_reality', '--ckpt', world['split'], '--out', tmp_path / 'fixed',
                 '--cluster', 0, 1, *common)
    assert result.returncode == 0, result.stderr
    record = torch.load(tmp_path / 'fixed' / 'video_data_01' / 'dense_correspondences_extras.pt', weights_only=True)
    points = torch.load(tmp_path / 'fixed' / 'video_data_01' / 'dense_correspondences.pt', weights_only=True)
    with torch.no_grad():
        expected = torch.stack([world['classifier'].run_flip_target(images, c)[1] for c in (0, 1)], dim=1)
    assert torch.equal(record['mirrored'], expected) and torch.isfinite(points).all()
    assert 'active_cluster' not in record

    # Without a classifier a clustering model still needs --cluster.
    result = run('-m', 'applications.mixed_reality', '--ckpt', world['plain'], '--out', tmp_path / 'none', *common)
    line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 1 and 'no cluster classifier' in line and not os.path.exists(tmp_path / 'none')
