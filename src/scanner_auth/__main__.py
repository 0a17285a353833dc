from scanner_auth.cli import main

main()
