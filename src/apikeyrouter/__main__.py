from apikeyrouter.cli import main

main()
