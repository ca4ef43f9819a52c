"""Where a run's wall time and host memory go: `Clock` times named phases (steps are the loop's
time less the actions timed inside it), written to WORKDIR/timing.json and summed up in one line."""

import collections
import contextlib
import json
import os
import resource
import time

STARTED = time.time()  # Set when ohc_jax is first imported: start-up is counted from here.


def peak_rss_mb() -> float:
  """This process's peak resident memory so far (Linux reports KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Clock:
  """Seconds per phase and the peak memory when each phase last ended."""

  def __init__(self):
    self.seconds = collections.defaultdict(float)
    self.peak_after = {}
    self.seconds['start-up'] = time.time() - STARTED
    self._loop_start = None

  @contextlib.contextmanager
  def __call__(self, phase: str):
    start = time.time()
    try:
      yield
    finally:
      self.seconds[phase] += time.time() - start
      self.peak_after[phase] = round(peak_rss_mb(), 1)

  def loop(self, running: bool) -> None:
    """Marks the step loop's start (running) or end; its untimed part is the steps' time."""
    if running:
      self._loop_start = time.time()
    elif self._loop_start is not None:
      inside = sum(s for p, s in self.seconds.items() if p in LOOP_ACTIONS)
      self.seconds['steps'] += time.time() - self._loop_start - inside
      self._loop_start = None

  def summary(self) -> dict:
    wall = time.time() - STARTED
    phases = {p: round(s, 3) for p, s in self.seconds.items()}
    phases['other'] = round(max(wall - sum(self.seconds.values()), 0.0), 3)
    return {'wall_s': round(wall, 3), 'phases_s': phases,
            'steps_share': round(self.seconds['steps'] / wall, 4) if wall else 0.0,
            'peak_rss_mb': round(peak_rss_mb(), 1), 'peak_rss_mb_after': self.peak_after}

  def write(self, workdir: str) -> str:
    """Writes timing.json; returns the one-line summary."""
    s = self.summary()
    with open(os.path.join(workdir, 'timing.json.tmp'), 'w') as f:
      json.dump(s, f, indent=2)
    os.replace(os.path.join(workdir, 'timing.json.tmp'), os.path.join(workdir, 'timing.json'))
    parts = ', '.join(f'{p} {v:.1f}' for p, v in sorted(s['phases_s'].items(), key=lambda x: -x[1])
                      if p != 'steps')
    return (f'wall time {s["wall_s"]:.1f} s: steps {s["phases_s"].get("steps", 0):.1f} s '
            f'({100 * s["steps_share"]:.0f}%), {parts}; peak host memory '
            f'{s["peak_rss_mb"] / 1024:.2f} GB (timing.json)')


# The actions timed inside the step loop (the rest of the loop's time is the steps').
LOOP_ACTIONS = ('compile', 'log', 'checkpoint', 'evaluate', 'epoch outputs')
