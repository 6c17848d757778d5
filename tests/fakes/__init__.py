"""Local fake servers of API platforms, built from each platform's documentation (not from our
clients), for the delivery SDK's tests. They listen on 127.0.0.1 on a port the OS picks."""
