"""forge-gateway: one OpenAI-compatible server for a base model, its experts and the router."""

from forge_gateway.app import create_app
from forge_gateway.config import GatewayConfig, load_config

__all__ = ["GatewayConfig", "create_app", "load_config"]
