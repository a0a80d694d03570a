"""Settings of the monitor (env prefix ``MONITOR_``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from libs.service import ServiceSettings
from services.monitor.windows import WindowConfig


class MonitorSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="MONITOR_", extra="ignore")

    http_port: int = 8106
    window_size: int = Field(default=1000, ge=1, description="Rows per version's window")
    window_step: int = Field(default=500, ge=1, description="New rows between evaluations")
    period_s: float = Field(
        default=10.0, gt=0, description="Seconds after which a window with new rows is evaluated"
    )
    min_rows: int = Field(default=200, ge=1, description="Rows with inputs before drift is scored")
    drift_threshold: float = Field(default=0.1, ge=0, description="Mean PSI that counts as over")
    drift_clear_threshold: float = Field(default=0.05, ge=0, description="Mean PSI that clears")
    drift_windows: int = Field(
        default=3,
        ge=1,
        description="Consecutive evaluations over to raise (windows overlap: size/step + 1 "
        "means a burst shorter than one step never raises)",
    )
    remembered_requests: int = Field(default=200_000, ge=1, description="For the feedback join")
    pending_feedback: int = Field(
        default=10_000, ge=0, description="Feedback awaiting its prediction"
    )
    pending_feedback_s: float = Field(default=300.0, ge=0)
    consumer_group: str = "monitor"
    consume_from: Literal["earliest", "latest"] = Field(
        default="latest",
        description="Where the traffic consumers start without committed offsets (promotions "
        "and prepared datasets are always read from the beginning)",
    )

    def windows(self) -> WindowConfig:
        return WindowConfig(
            size=self.window_size,
            step=self.window_step,
            period_s=self.period_s,
            min_rows=min(self.min_rows, self.window_size),
            threshold=self.drift_threshold,
            clear_threshold=min(self.drift_clear_threshold, self.drift_threshold),
            raise_after=self.drift_windows,
            remembered_requests=self.remembered_requests,
            pending_feedback=self.pending_feedback,
            pending_feedback_s=self.pending_feedback_s,
        )
