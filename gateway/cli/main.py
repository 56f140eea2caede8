def main() -> None:
    raise SystemExit("pmg: CLI not built yet")
