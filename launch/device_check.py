r"""The helpers of launch/device_check.sh: nothing here imports TensorFlow, tfds or tensorboardX.

  python launch/device_check.py env OUT/env.json          # versions, devices, missing packages
  python launch/device_check.py images DIR NUM SIZE       # a synthetic image folder (folder:DIR)
  python launch/device_check.py profile TRACE_DIR OUT/profile.json   # where a step's time goes
  python launch/device_check.py summary OUT               # OUT/summary.md from OUT's JSON files
"""

import collections
import glob
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys

# The packages the device image may lack: (import name, distribution).
OPTIONAL = (('tensorflow', 'tensorflow'), ('tensorflow_datasets', 'tensorflow-datasets'),
            ('ml_collections', 'ml-collections'), ('tensorboardX', 'tensorboardX'))


def _version(dist: str):
  try:
    return importlib.metadata.version(dist)
  except importlib.metadata.PackageNotFoundError:
    return None


def env(out: str) -> None:
  """The environment: versions, backend, devices, which optional packages are there (not imported)."""
  import jax
  result = {
      'python': platform.python_version(), 'platform': platform.platform(),
      'versions': {d: _version(d) for d in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint',
                                            'numpy', 'scipy', 'scikit-learn', 'opencv-python',
                                            'opencv-python-headless', 'absl-py', 'PyYAML')},
      'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
      'devices': [str(d) for d in jax.devices()], 'device_count': jax.device_count(),
      'optional_packages': {name: (_version(dist) if importlib.util.find_spec(name) else None)
                            for name, dist in OPTIONAL},
      'from_wheels': os.environ.get('DEVICE_CHECK_WHEELS', '').split(),
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
  }
  with open(out, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'{result["backend"]}: {result["device_count"]} x {result["device_kind"]}; jax '
        f'{result["versions"]["jax"]}, flax {result["versions"]["flax"]}; missing: '
        f'{[n for n, v in result["optional_packages"].items() if v is None] or "none"}')


def images(folder: str, num: int, size: int) -> None:
  """`num` PNGs of size x size x 3 in 10 class sub-folders: each class a coarse random colour
  pattern plus noise (launch/make_synthetic_images.py's rule), seed 0."""
  import cv2
  import numpy as np
  rng = np.random.default_rng(0)
  patterns = rng.integers(0, 256, (10, 4, 4, 3)).astype(np.int16)
  labels = rng.integers(0, 10, num)
  for k in range(10):
    os.makedirs(os.path.join(folder, str(k)), exist_ok=True)
  for i, k in enumerate(labels):
    base = np.kron(patterns[k], np.ones((-(-size // 4), -(-size // 4), 1), np.int16))[:size, :size]
    image = np.clip(base + rng.integers(-40, 41, base.shape), 0, 255).astype(np.uint8)
    cv2.imwrite(os.path.join(folder, str(k), f'{i:06d}.png'), image)


def profile(trace_dir: str, out: str, top: int = 15) -> None:
  """Where a traced step's time goes: the XLA ops' total time by name (the device's planes; on
  the CPU the XLA threads of the host), from the trace's xplane.pb (jax.profiler.ProfileData)."""
  from jax.profiler import ProfileData
  paths = sorted(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True))
  if not paths:
    sys.exit(f'error: no *.xplane.pb under {trace_dir}: the run wrote no trace '
             f'(set --config.profile_steps)')
  data = ProfileData.from_file(paths[-1])
  planes = [p for p in data.planes if p.name.startswith('/device:')]
  if planes:  # An accelerator: its op lines.
    lines = [line for p in planes for line in p.lines if line.name in ('XLA Ops', 'Ops')]
    lines = lines or [line for p in planes for line in p.lines]
  else:  # XLA:CPU: the host's XLA threads.
    lines = [line for p in data.planes if p.name == '/host:CPU' for line in p.lines
             if 'XLA' in line.name and 'Compile' not in line.name]
  by_name = collections.Counter()
  for line in lines:
    for event in line.events:
      if not event.name.startswith(('ThreadpoolListener', 'TaskDispatcher', 'ThunkExecutor')):
        by_name[event.name] += event.duration_ns
  total = sum(by_name.values())
  result = {'trace': paths[-1], 'planes': [p.name for p in planes] or ['/host:CPU'],
            'total_ms': total / 1e6,
            'top': [{'name': name, 'ms': ns / 1e6, 'share': ns / total if total else 0.0}
                    for name, ns in by_name.most_common(top)]}
  with open(out, 'w') as f:
    json.dump(result, f, indent=2)
  print(f'trace: {total / 1e6:.1f} ms in XLA ops; the largest: ' +
        ', '.join(f'{r["name"]} {100 * r["share"]:.0f}%' for r in result['top'][:5]))


def _load(out: str, name: str):
  path = os.path.join(out, name)
  return json.load(open(path)) if os.path.exists(path) else None


def _fmt(value, spec):
  return '-' if value is None else format(value, spec)


def summary(out: str) -> None:
  """OUT/summary.md: the figures of OUT's JSON files, in short tables."""
  lines = ['# Device check', '']
  e = _load(out, 'env.json')
  if e:
    lines += [f'{e["backend"]}: {e["device_count"]} x {e["device_kind"]}; jax {e["versions"]["jax"]}'
              f', jaxlib {e["versions"]["jaxlib"]}, flax {e["versions"]["flax"]}; optional packages: '
              + ', '.join(f'{k} {v or "missing"}' for k, v in e['optional_packages'].items())
              + (f'; installed from .whl/: {", ".join(e["from_wheels"])}' if e['from_wheels']
                 else ''), '']
  t = _load(out, 'train.json')
  if t:
    lines += ['## Train suite (K=10)', '',
              '| encoder | image | batch | dtype | images/s | argmin images/s | forward ms | '
              'assignment ms | share | peak MB |', '|---|---|---|---|---|---|---|---|---|---|']
    for r in t['rows']:
      lines.append(f'| {r["encoder"]} | {r["image_size"]} | {r["batch_size"]} | '
                   f'{r["compute_dtype"]} | {r["combination_images_per_s"]:.0f} | '
                   f'{r["argmin_images_per_s"]:.0f} | {r["forward_ms"]:.2f} | '
                   f'{r["assignment_ms_per_batch"]:.3f} | {100 * r["assignment_share_of_step"]:.1f}%'
                   f' | {_fmt(r["peak_device_memory_mb"], ".0f")} |')
    lines.append('')
  a = _load(out, 'assign.json')
  if a:
    lines += ['## Assign suite', '', '| B | K | sequential ms | parallel ms | rounds | speed-up |',
              '|---|---|---|---|---|---|']
    lines += [f'| {r["batch_size"]} | {r["num_clusters"]} | {r["sequential_ms"]:.3f} | '
              f'{r["parallel_ms"]:.3f} | {r["parallel_rounds"]} | {r["speedup"]:.1f}x |'
              for r in a['rows']]
    lines += ['', 'Staircase (worst case): with the hand-over vs the rounds alone', '',
              '| B | K | sequential ms | parallel ms | iterations | rounds alone ms | rounds |',
              '|---|---|---|---|---|---|---|']
    lines += [f'| {r["batch_size"]} | {r["num_clusters"]} | {r["sequential_ms"]:.3f} | '
              f'{r["parallel_ms"]:.3f} | {r["parallel_iterations"]} | '
              f'{r["rounds_without_handover_ms"]:.3f} | {r["rounds_without_handover"]} |'
              for r in a['worst_case']]
    lines.append('')
  r, timing = _load(out, 'e2e_results.json'), _load(out, 'e2e_timing.json')
  if r:
    final = r['final']
    lines += ['## End to end (synthetic images, simp)', '',
              f'epoch {final["epoch"]}: ACC {final["acc"]:.4f} NMI {final["nmi"]:.4f}, '
              f'{final["num_nonempty"]} clusters, {final["train_images_per_s"]:.0f} images/s'
              + (f'; wall time {timing["wall_s"]:.1f} s' if timing and 'wall_s' in timing else ''),
              '']
  p = _load(out, 'profile.json')
  if p:
    lines += [f'## Profile ({p["total_ms"]:.1f} ms in XLA ops over the traced steps)', '',
              '| op | ms | share |', '|---|---|---|']
    lines += [f'| `{x["name"][:60]}` | {x["ms"]:.2f} | {100 * x["share"]:.1f}% |'
              for x in p['top'][:10]]
    lines.append('')
  with open(os.path.join(out, 'summary.md'), 'w') as f:
    f.write('\n'.join(lines))
  print('\n'.join(lines))


if __name__ == '__main__':
  command, *args = sys.argv[1:]
  if command == 'images':
    images(args[0], int(args[1]), int(args[2]))
  else:
    {'env': env, 'profile': profile, 'summary': summary}[command](*args)
