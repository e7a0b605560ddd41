from bcd_cli.cli.command import main

main()
