from hostwarden.cli import main

main()
