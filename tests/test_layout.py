"""The package's layout: imports go down the layers and form no cycle (README, 'Where things are')."""

import ast
import os

import ohc_jax

PACKAGE = os.path.dirname(ohc_jax.__file__)
# Higher imports lower, never the reverse: entry points -> run -> data, models -> core; the shared
# modules (configuration, sharding, memory, errors) sit between the layers that use them.
RANKS = {'errors': 0, 'core': 1, 'memory': 1, 'sharding': 2, 'models': 2, 'data': 3,
         'configuration': 4, 'run': 5, 'cli': 6, 'main': 7, 'predict': 7, 'report': 7, 'benchmark': 7}


def _modules():
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith('.py'):
        rel = os.path.relpath(os.path.join(root, f), PACKAGE)[:-3].replace(os.sep, '.')
        yield rel.removesuffix('.__init__').removesuffix('__init__'), os.path.join(root, f)


def _imports(path):
  """Every ohc_jax module a file imports, at the top or inside a function."""
  found = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('ohc_jax'):
      base = node.module.removeprefix('ohc_jax').lstrip('.')
      for alias in node.names:
        sub = f'{base}.{alias.name}' if base else alias.name
        found.add(sub if _exists(sub) else base)
    elif isinstance(node, ast.Import):
      found |= {a.name.removeprefix('ohc_jax.') for a in node.names if a.name.startswith('ohc_jax.')}
  return found - {''}


def _exists(dotted):
  path = os.path.join(PACKAGE, *dotted.split('.'))
  return os.path.exists(path + '.py') or os.path.isdir(path)


def _rank(module):
  return RANKS.get(module.split('.')[0])


def test_every_module_has_a_layer():
  assert {m for m, _ in _modules() if m and _rank(m) is None} == set()


def test_imports_go_down_the_layers():
  upward = []
  for module, path in _modules():
    for imported in _imports(path):
      if module and _rank(imported) > _rank(module) and not module.startswith('configs'):
        upward.append(f'{module} -> {imported}')
  assert upward == []


def test_no_import_cycle():
  graph = {m: {i for i in _imports(p) if i != m} for m, p in _modules() if m}
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = 'open'
    for nxt in graph.get(node, ()):
      if state.get(nxt) == 'open':
        cycles.append(stack[stack.index(nxt):] + [nxt])
      elif nxt not in state:
        visit(nxt, stack + [nxt])
    state[node] = 'done'

  for node in graph:
    if node not in state:
      visit(node, [node])
  assert cycles == []
