"""PNG plots of a run, into WORKDIR/plots/: made at the end of epochs and by `ohc_jax.report`.

- `cluster_sizes.png`: the hard and soft cluster-size distributions of every epoch (sorted, one
  line per epoch, darker = later) against the prior (dashed).
- `confusion.png`: clusters (rows, in the order of the Hungarian matching) against classes.
- `metrics.png`: ACC, NMI, ARI, KL*, training loss and non-empty clusters over epochs.
- `embedding.png`: a 2-D PCA projection of the encodings z, coloured by cluster and by class, with
  the centroids.
- `examples.png` (image data): for up to 20 of the largest clusters, the 10 members closest to the
  centroid.

Every figure has a fixed size (SIZES, in inches at DPI), so a plot's pixel size is known. Uses
matplotlib's object API with the Agg canvas only (no pyplot, no display, safe in any process).
"""

import os
from typing import Optional, Sequence

import numpy as np

DPI = 80
SIZES = {  # name: (width, height) in inches.
    'cluster_sizes': (10, 4),
    'confusion': (7, 6),
    'metrics': (12, 6),
    'embedding': (12, 5.5),
    'examples': (8, 8),
}
MAX_POINTS = 2000  # Points drawn in the embedding plot (a fixed random subset).
MAX_EXAMPLE_CLUSTERS = 20
EXAMPLES_PER_CLUSTER = 10


def pixel_size(name: str) -> tuple[int, int]:
  """(width, height) in pixels of a plot."""
  w, h = SIZES[name]
  return int(round(w * DPI)), int(round(h * DPI))


def _figure(name: str):
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=SIZES[name], dpi=DPI)
  FigureCanvasAgg(fig)
  return fig


def _save(fig, plot_dir: str, name: str) -> str:
  path = os.path.join(plot_dir, f'{name}.png')
  tmp = path + '.tmp.png'
  fig.savefig(tmp, dpi=DPI, format='png')
  os.replace(tmp, path)  # A reader never sees half a PNG.
  return path


def hungarian_order(table: np.ndarray) -> np.ndarray:
  """Clusters ordered by the class the Hungarian matching gives them; unmatched ones last, largest
  first. table[k, c]: points of class c in cluster k."""
  from scipy.optimize import linear_sum_assignment
  rows, cols = linear_sum_assignment(table, maximize=True)
  matched = [r for _, r in sorted(zip(cols, rows))]
  rest = sorted(set(range(table.shape[0])) - set(matched), key=lambda k: -table[k].sum())
  return np.array(matched + rest, np.int64)


def cluster_sizes(plot_dir: str, history: Sequence[dict], prior: np.ndarray) -> str:
  from matplotlib import cm
  fig = _figure('cluster_sizes')
  prior = np.sort(np.asarray(prior, np.float64) / np.sum(prior))[::-1]
  ks = np.arange(1, len(prior) + 1)
  for ax, key, title in zip(fig.subplots(1, 2), ('hard_sizes', 'soft_sizes'), ('hard', 'soft')):
    for i, record in enumerate(history):
      sizes = np.asarray(record.get(key, []), np.float64)
      if sizes.size == 0 or sizes.sum() <= 0:
        continue
      colour = cm.viridis(0.15 + 0.8 * i / max(len(history) - 1, 1))
      ax.plot(ks[:len(sizes)], np.sort(sizes / sizes.sum())[::-1], color=colour, lw=1.2,
              label=f'epoch {record["epoch"]}' if i in (0, len(history) - 1) else None)
    ax.plot(ks, prior, 'k--', lw=1.5, label='prior')
    ax.set_xlabel('cluster (sorted by size)')
    ax.set_ylabel('fraction of points')
    ax.set_title(f'{title} cluster sizes per epoch')
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
  fig.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.22)
  return _save(fig, plot_dir, 'cluster_sizes')


def confusion(plot_dir: str, labels: np.ndarray, clusters: np.ndarray, num_clusters: int,
              class_names: Sequence[str] = ()) -> str:
  num_classes = max(int(labels.max()) + 1 if len(labels) else 1, len(class_names))
  table = np.zeros((num_clusters, num_classes), np.int64)
  np.add.at(table, (clusters, labels), 1)
  order = hungarian_order(table)
  shown = table[order]
  fig = _figure('confusion')
  ax = fig.subplots()
  image = ax.imshow(shown, aspect='auto', cmap='Blues', interpolation='nearest')
  fig.colorbar(image, ax=ax, label='points')
  if num_clusters <= 20 and num_classes <= 20:
    for (k, c), v in np.ndenumerate(shown):
      if v:
        ax.text(c, k, str(v), ha='center', va='center', fontsize=7,
                color='white' if v > shown.max() / 2 else 'black')
  if num_classes <= 20:
    ax.set_xticks(range(num_classes))
    ax.set_xticklabels(list(class_names) if len(class_names) == num_classes
                       else range(num_classes), rotation=45, ha='right', fontsize=8)
  if num_clusters <= 30:
    ax.set_yticks(range(num_clusters))
    ax.set_yticklabels(order, fontsize=8)
  ax.set_xlabel('class')
  ax.set_ylabel('cluster (Hungarian order)')
  ax.set_title('clusters against classes')
  fig.subplots_adjust(left=0.12, right=0.98, bottom=0.14, top=0.93)
  return _save(fig, plot_dir, 'confusion')


def metric_curves(plot_dir: str, history: Sequence[dict]) -> str:
  from matplotlib.ticker import MaxNLocator
  fig = _figure('metrics')
  epochs = [r['epoch'] for r in history]
  panels = (('acc', 'nmi', 'ari'), ('kl_star',), ('train_loss',), ('num_nonempty',))
  for ax, keys in zip(fig.subplots(2, 2).ravel(), panels):
    for key in keys:
      ax.plot(epochs, [r.get(key, np.nan) for r in history], marker='o', ms=3, label=key)
    ax.set_xlabel('epoch')
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(', '.join(keys))
    ax.grid(alpha=0.3)
    if len(keys) > 1:
      ax.legend(fontsize=8)
  fig.subplots_adjust(left=0.06, right=0.98, bottom=0.09, top=0.94, hspace=0.45, wspace=0.18)
  return _save(fig, plot_dir, 'metrics')


def pca_2d(z: np.ndarray, *extra: np.ndarray):
  """The 2-D principal projection of z, and the same projection of each array in extra."""
  z = np.asarray(z, np.float64)
  mean = z.mean(0)
  _, _, vt = np.linalg.svd(z - mean, full_matrices=False)
  basis = vt[:2].T
  if basis.shape[1] < 2:
    basis = np.pad(basis, ((0, 0), (0, 2 - basis.shape[1])))
  return [(a - mean) @ basis for a in (z, *extra)]


def embedding(plot_dir: str, z: np.ndarray, clusters: np.ndarray, labels: Optional[np.ndarray],
              centroids: Optional[np.ndarray] = None, seed: int = 0) -> str:
  pick = np.arange(len(z))
  if len(z) > MAX_POINTS:
    pick = np.sort(np.random.default_rng(seed).choice(len(z), MAX_POINTS, replace=False))
  extra = [] if centroids is None else [np.asarray(centroids)]
  projected = pca_2d(z[pick], *extra)
  xy = projected[0]
  fig = _figure('embedding')
  panels = [('cluster', clusters[pick])]
  if labels is not None:
    panels.append(('class', labels[pick]))
  for ax, (name, colour) in zip(fig.subplots(1, 2), panels):
    ax.scatter(xy[:, 0], xy[:, 1], c=colour, cmap='tab20' if colour.max() < 20 else 'hsv', s=4,
               alpha=0.7, linewidths=0)
    if centroids is not None:
      ax.scatter(projected[1][:, 0], projected[1][:, 1], marker='x', c='black', s=30,
                 label='centroids')
      ax.legend(fontsize=8, loc='best')
    ax.set_title(f'PCA of the encodings, coloured by {name}')
    ax.set_xticks([])
    ax.set_yticks([])
  fig.subplots_adjust(left=0.02, right=0.98, bottom=0.03, top=0.93, wspace=0.05)
  return _save(fig, plot_dir, 'embedding')


def examples(plot_dir: str, images: np.ndarray, clusters: np.ndarray, cost: np.ndarray,
             num_clusters: int, labels: Optional[np.ndarray] = None,
             class_names: Sequence[str] = ()) -> str:
  """Rows: the largest clusters (up to MAX_EXAMPLE_CLUSTERS), in Hungarian order when labels are
  given; columns: their members of lowest cost (closest to the centroid)."""
  images = np.asarray(images)
  if images.ndim == 3:
    images = images[..., None]
  sizes = np.bincount(clusters, minlength=num_clusters)
  if labels is not None:
    table = np.zeros((num_clusters, int(labels.max()) + 1), np.int64)
    np.add.at(table, (clusters, labels), 1)
    order = hungarian_order(table)
  else:
    order = np.argsort(-sizes, kind='stable')
  largest = set(np.argsort(-sizes, kind='stable')[:MAX_EXAMPLE_CLUSTERS].tolist())
  rows = [int(k) for k in order if k in largest and sizes[k] > 0]
  h, w, c = images.shape[1:]
  pad = max(1, h // 16)
  picked = []
  for k in rows:
    members = np.flatnonzero(clusters == k)
    picked.append(members[np.argsort(cost[members], kind='stable')][:EXAMPLES_PER_CLUSTER])
  values = images[np.concatenate(picked)].astype(np.float64) if picked else np.zeros(1)
  lo, hi = float(values.min()), float(values.max())
  scale = 1.0 / (hi - lo) if hi > lo else 1.0
  mosaic = np.ones((max(len(rows), 1) * (h + pad), EXAMPLES_PER_CLUSTER * (w + pad), c))
  for r, members in enumerate(picked):
    for j, i in enumerate(members):
      mosaic[r * (h + pad):r * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = (
          (images[i].astype(np.float64) - lo) * scale)
  fig = _figure('examples')
  ax = fig.add_axes([0.2, 0.02, 0.78, 0.9])
  ax.imshow(mosaic[..., 0] if c == 1 else mosaic, cmap='gray' if c == 1 else None,
            interpolation='nearest', aspect='auto', vmin=0, vmax=1)
  ax.set_xticks([])
  ax.set_yticks([(r + 0.5) * (h + pad) for r in range(len(rows))])
  names = []
  for k in rows:
    name = f'cluster {k} ({sizes[k]})'
    if labels is not None:
      top = int(np.bincount(labels[clusters == k]).argmax())
      name += f': {class_names[top] if top < len(class_names) else top}'
    names.append(name)
  ax.set_yticklabels(names, fontsize=7)
  more = f' ({len(rows)} of {num_clusters} clusters)' if len(rows) < num_clusters else ''
  fig.suptitle(f'members closest to each centroid{more}', fontsize=10)
  return _save(fig, plot_dir, 'examples')


def is_image_data(input_shape: Sequence[int]) -> bool:
  return len(input_shape) == 3 and input_shape[-1] in (1, 3) and min(input_shape[:2]) >= 4


def make_all(plot_dir: str, *, history: Sequence[dict], prior: np.ndarray, outputs: dict,
             labels: Optional[np.ndarray], images: Optional[np.ndarray], num_clusters: int,
             class_names: Sequence[str] = (), centroids: Optional[np.ndarray] = None,
             seed: int = 0) -> list[str]:
  """Every plot from a run's history and one evaluation pass (outputs of the eval step: cluster,
  cost, z). Returns the paths written."""
  os.makedirs(plot_dir, exist_ok=True)
  clusters = np.asarray(outputs['cluster'])
  paths = [cluster_sizes(plot_dir, history, prior), metric_curves(plot_dir, history)]
  if labels is not None:
    paths.append(confusion(plot_dir, labels, clusters, num_clusters, class_names))
  paths.append(embedding(plot_dir, outputs['z'], clusters, labels, centroids, seed))
  if images is not None and is_image_data(images.shape[1:]):
    paths.append(examples(plot_dir, images, clusters, np.asarray(outputs['cost']), num_clusters,
                          labels, class_names))
  return paths
