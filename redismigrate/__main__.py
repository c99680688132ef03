from redismigrate.cli import main

main()
