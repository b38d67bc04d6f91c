.PHONY: check lint test
check: lint test
lint:
	ruff check ctxbatch tests benchmarks
	ruff format --check ctxbatch tests benchmarks
	mypy
test:
	python -m pytest
