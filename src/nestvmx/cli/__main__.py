from nestvmx.cli.main import main

main()
