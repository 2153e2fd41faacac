"""Generated from proto/agentflow/payments/v1 by scripts/gen-protos. Do not edit."""

from agentflow_payments.v1 import accounts_pb2 as accounts_pb2
from agentflow_payments.v1 import accounts_pb2_grpc as accounts_pb2_grpc
from agentflow_payments.v1 import admin_pb2 as admin_pb2
from agentflow_payments.v1 import admin_pb2_grpc as admin_pb2_grpc
from agentflow_payments.v1 import common_pb2 as common_pb2
from agentflow_payments.v1 import escrow_pb2 as escrow_pb2
from agentflow_payments.v1 import escrow_pb2_grpc as escrow_pb2_grpc
from agentflow_payments.v1 import events_pb2 as events_pb2
from agentflow_payments.v1 import events_pb2_grpc as events_pb2_grpc
from agentflow_payments.v1 import payments_pb2 as payments_pb2
from agentflow_payments.v1 import payments_pb2_grpc as payments_pb2_grpc
from agentflow_payments.v1 import webhooks_pb2 as webhooks_pb2
from agentflow_payments.v1 import webhooks_pb2_grpc as webhooks_pb2_grpc
