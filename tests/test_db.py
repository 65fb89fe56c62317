"""Database errors never carry the statement's values (patient data) into the log."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from xds.db import create_engine


def test_a_database_error_does_not_show_the_values(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path}/x.db")
    table = sa.Table("patient", sa.MetaData(), sa.Column("patient_id", sa.String, unique=True),
                     sa.Column("patient_name", sa.String))
    table.metadata.create_all(engine)
    row = {"patient_id": "PID-4711", "patient_name": "Doe^Jane"}
    with engine.begin() as connection:
        connection.execute(table.insert(), row)
    with pytest.raises(IntegrityError) as raised, engine.begin() as connection:
        connection.execute(table.insert(), row)
    message = str(raised.value)
    assert "UNIQUE" in message  # the error itself is told
    assert "Doe^Jane" not in message and "PID-4711" not in message
