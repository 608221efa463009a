"""The live dashboard of the OpenAI server: /dashboard, /dashboard/snapshot, /dashboard/events."""

from pagedllm.entrypoints.dashboard.routes import install_dashboard

__all__ = ["install_dashboard"]
