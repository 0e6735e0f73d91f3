"""What the stages' libraries import on first use rather than at import, imported once by the
warm forkserver (ctloop_app.warm_tasks) so that no task pays it. Found by listing the modules
each task of a local cycle still imported itself:

- torch's optimizers import torch._dynamo (and sympy with it) at their first step: 1.2 s in
  every train task;
- ctloop.registry imports MLflow's SQL stores (and alembic) when it opens its first client, with
  SQLAlchemy's deprecation warning about them silenced: 0.7 s in each of six tasks of a cycle.
"""

import torch._dynamo  # noqa: F401

from ctloop import registry

registry.import_sql_stores()
