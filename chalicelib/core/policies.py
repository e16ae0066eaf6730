"""Pure: EventBridge patterns, the queue policy and the controller policy, as dicts."""
from __future__ import annotations

EVENT_PATTERNS = {
    "spot_interruption": {
        "source": ["aws.ec2"], "detail-type": ["EC2 Spot Instance Interruption Warning"]},
    "rebalance_recommendation": {
        "source": ["aws.ec2"], "detail-type": ["EC2 Instance Rebalance Recommendation"]},
    "instance_state_change": {
        "source": ["aws.ec2"], "detail-type": ["EC2 Instance State-change Notification"]},
    # Karpenter only acts on EC2 scheduled changes, so the rule narrows to those.
    "scheduled_change": {
        "source": ["aws.health"], "detail-type": ["AWS Health Event"],
        "detail": {"service": ["EC2"], "eventTypeCategory": ["scheduledChange"]}},
    "capacity_reservation_interruption": {
        "source": ["aws.ec2"],
        "detail-type": ["EC2 Capacity Reservation Instance Interruption Warning"]},
}

# The trigger's own rule: EKS cluster creation and deletion, as CloudTrail reports them.
EKS_EVENT_PATTERN = {
    "source": ["aws.eks"],
    "detail-type": ["AWS API Call via CloudTrail"],
    "detail": {"eventSource": ["eks.amazonaws.com"],
               "eventName": ["CreateCluster", "DeleteCluster", "UpdateClusterConfig"]},
}


def drift_event_pattern(prefix: str, iam_path: str) -> dict:
    """The drift trigger's rule: CloudTrail management events that change kip-named rules, queues
    and policies (the member template's forwarding rules use the same filters). IAM reports to
    EventBridge in us-east-1 only: the hub needs this rule there, or forwarding from members."""
    return {
        "source": ["aws.events", "aws.sqs", "aws.iam"],
        "detail-type": ["AWS API Call via CloudTrail"],
        "detail": {
            "eventSource": ["events.amazonaws.com", "sqs.amazonaws.com", "iam.amazonaws.com"],
            "eventName": ["DeleteRule", "DisableRule", "PutRule", "RemoveTargets", "PutTargets",
                          "DeleteQueue", "SetQueueAttributes", "RemovePermission", "UntagQueue",
                          "DetachRolePolicy", "DeletePolicy", "CreatePolicyVersion",
                          "SetDefaultPolicyVersion", "DeletePolicyVersion"],
            "requestParameters": {"$or": [
                {"name": [{"prefix": prefix}]},
                {"rule": [{"prefix": prefix}]},
                {"queueUrl": [{"wildcard": f"*/{prefix}*"}]},
                {"policyArn": [{"wildcard": f"arn:*:iam::*:policy{iam_path}{prefix}*"}]},
            ]},
        },
    }

CONTROLLER_SQS_ACTIONS = ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"]


def interruption_pattern(kinds: "list[str] | tuple[str, ...]") -> dict:
    """One EventBridge pattern matching every selected kind: the EC2 kinds as one array of
    detail-types, the Health kind (narrowed to EC2 scheduled changes) as an ``$or`` branch."""
    ec2 = [t for k in kinds if EVENT_PATTERNS[k]["source"] == ["aws.ec2"]
           for t in EVENT_PATTERNS[k]["detail-type"]]
    branches = [{"source": ["aws.ec2"], "detail-type": ec2}] if ec2 else []
    branches += [EVENT_PATTERNS[k] for k in kinds if EVENT_PATTERNS[k]["source"] != ["aws.ec2"]]
    return branches[0] if len(branches) == 1 else {"$or": branches}


def queue_policy(queue_arn: str, rule_arns: list[str], partition: str = "aws",
                 reader_arn: str | None = None) -> dict:
    """EventBridge may send, only from this cluster's own rules; nothing over plain HTTP.
    ``reader_arn`` (KIP_GRANT_MODE=queue-policy): the controller role may read, and only it: by
    ``aws:PrincipalArn``, which holds before the role exists and after it is re-created (a
    principal element naming the role would turn into its unique id)."""
    dns_suffix = "amazonaws.com.cn" if partition == "aws-cn" else "amazonaws.com"
    reader = [{
        "Sid": "KarpenterControllerReads",
        "Effect": "Allow",
        "Principal": {"AWS": "*"},
        "Action": list(CONTROLLER_SQS_ACTIONS),
        "Resource": queue_arn,
        "Condition": {"ArnEquals": {"aws:PrincipalArn": reader_arn}},
    }] if reader_arn else []
    return {
        "Version": "2012-10-17",
        "Id": "KarpenterInterruptionQueuePolicy",
        "Statement": [
            {
                "Sid": "EventBridgeSendFromClusterRules",
                "Effect": "Allow",
                "Principal": {"Service": "events." + dns_suffix},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnEquals": {"aws:SourceArn": sorted(rule_arns)}},
            },
            *reader,
            {
                "Sid": "DenyHTTP",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "sqs:*",
                "Resource": queue_arn,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
        ],
    }


def controller_policy(queue_arn: str, kms_key_arn: str | None = None) -> dict:
    statements = [{
        "Sid": "KarpenterInterruptionQueue",
        "Effect": "Allow",
        "Action": list(CONTROLLER_SQS_ACTIONS),
        "Resource": queue_arn,
    }]
    if kms_key_arn:
        statements.append({
            "Sid": "KarpenterInterruptionQueueKey",
            "Effect": "Allow",
            "Action": ["kms:Decrypt"],
            "Resource": kms_key_arn,
        })
    return {"Version": "2012-10-17", "Statement": statements}


def is_controller_policy(document: dict, queue_arn: str, kms_key_arn: str | None) -> bool:
    """Whether ``document`` is exactly the controller policy kip generates for this queue (and
    key): the only content kip will ever attach to a role."""
    return document == controller_policy(queue_arn, kms_key_arn)


def dlq_policy(dlq_arn: str) -> dict:
    return {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "DenyHTTP", "Effect": "Deny", "Principal": "*", "Action": "sqs:*",
            "Resource": dlq_arn, "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        }],
    }
