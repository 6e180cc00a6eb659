def main() -> None:
    print("kdfast")
