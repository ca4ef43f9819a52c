r"""Online hard clustering as the method was meant for: one pass over CIFAR-10's 50,000 training
images, streamed (never held), evaluated every 50 steps on the 10,000 held-out test images.

  python launch/to_array_record.py ../shared/data/tfds/cifar10/3.0.2 /tmp/tfds_ar/cifar10/3.0.2
  python -m ohc_jax.main --workdir=runs/stream_cifar10 --config=stream_cifar10 \
      --config.data_dir=/tmp/tfds_ar

Measured (2-core CPU, 2026-12-03): ACC 0.2365, NMI 0.1110 after the pass, 10/10 clusters, 57 s;
docs/results.md, "A single pass over a stream", has every evaluation.
"""

from ohc_jax.configuration import base_config


def get_config():
  c = base_config()
  c.dataset = 'cifar10'
  c.input_mode = 'stream'
  c.protocol = 'holdout'  # Train on the stream of train, evaluate on test.
  c.num_epochs = 1
  c.eval_every_steps = 50
  c.checkpoint_every_steps = 50
  return c
