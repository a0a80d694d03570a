"""training_run indexes for the run list (GET /runs: newest first, by status, model, dataset)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 20:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("training_run", schema=None) as batch_op:
        batch_op.create_index("ix_training_run_recorded_at", ["recorded_at"], unique=False)
        batch_op.create_index(
            "ix_training_run_status_recorded_at", ["status", "recorded_at"], unique=False
        )
        batch_op.create_index(
            "ix_training_run_model_name_recorded_at", ["model_name", "recorded_at"], unique=False
        )
        batch_op.create_index(
            "ix_training_run_dataset_version", ["dataset", "dataset_version"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("training_run", schema=None) as batch_op:
        batch_op.drop_index("ix_training_run_dataset_version")
        batch_op.drop_index("ix_training_run_model_name_recorded_at")
        batch_op.drop_index("ix_training_run_status_recorded_at")
        batch_op.drop_index("ix_training_run_recorded_at")
