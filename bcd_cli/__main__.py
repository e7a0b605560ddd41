from bcd_cli.cli import main

main()
