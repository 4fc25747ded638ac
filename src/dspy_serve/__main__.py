from dspy_serve.cli import main

main()
