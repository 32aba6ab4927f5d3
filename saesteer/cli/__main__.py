from saesteer.cli import main

main()
