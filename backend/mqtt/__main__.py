from backend.mqtt.runtime import main

raise SystemExit(main())
