from splitcli.cli import main

main()
