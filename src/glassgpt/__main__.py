from glassgpt.cli import run

run()
