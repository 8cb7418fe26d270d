"""A MySQLCluster operator on kubus: ``kubus reconciler --controllers mysql-operator``."""

from kubus_mysql.operator import (
    MySQLCluster,
    MySQLClusterSpec,
    MySQLClusterStatus,
    MySQLOperator,
)

__all__ = ["MySQLCluster", "MySQLClusterSpec", "MySQLClusterStatus", "MySQLOperator"]
