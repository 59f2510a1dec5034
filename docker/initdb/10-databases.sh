#!/bin/sh
# Create one database per name in POSTGRES_MULTIPLE_DATABASES (the image makes only the first).
set -eu
for name in $(echo "$POSTGRES_MULTIPLE_DATABASES" | tr ',' ' '); do
    psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -tc "SELECT 1 FROM pg_database WHERE datname = '$name'" | grep -q 1 \
        || psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -c "CREATE DATABASE \"$name\""
done
