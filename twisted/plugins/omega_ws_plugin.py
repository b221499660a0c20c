from twisted.application.service import ServiceMaker

omega_ws = ServiceMaker(
    "omega-ws",
    "omega_ws.tap",
    "Real-time WebSocket broadcast server (ws://, wss://, admin HTTP)",
    "omega-ws",
)
