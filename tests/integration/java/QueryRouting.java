// QueryRouting URL USER PASSWORD TENANT...: connect with the PostgreSQL JDBC driver WITHOUT a
// tenant in the startup packet and let the router pick the cluster from the first query.
// For each tenant, on a fresh connection:
//   prepared.<tenant>.port=N / prepared.<tenant>.count=N
//       from PreparedStatement "SELECT current_setting('port'), count(*) FROM items
//       WHERE tenant_id = ?" with setString(1, tenant) (extended protocol, tenant in Bind);
//   set.<tenant>.port=N / set.<tenant>.tenant=T
//       from Statement "SET app.tenant_id = '<tenant>'" then a query (simple protocol).
// Exit 0; on an SQLException print "sqlstate=XXXXX message=..." and exit 2.
// Compiled and run by tests/integration/test_query_routing.py.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;

public class QueryRouting {
	static Connection open(String url, String user, String password) throws SQLException {
		Properties p = new Properties();
		p.setProperty("user", user);
		p.setProperty("password", password);
		p.setProperty("connectTimeout", "10");
		p.setProperty("socketTimeout", "20");
		return DriverManager.getConnection(url, p);
	}

	public static void main(String[] args) throws Exception {
		String url = args[0], user = args[1], password = args[2];
		try {
			for (int i = 3; i < args.length; i++) {
				String t = args[i];
				try (Connection c = open(url, user, password);
						PreparedStatement ps = c.prepareStatement(
								"SELECT current_setting('port'), count(*) FROM items "
										+ "WHERE tenant_id = ?")) {
					ps.setString(1, t);
					try (ResultSet r = ps.executeQuery()) {
						r.next();
						System.out.println("prepared." + t + ".port=" + r.getString(1));
						System.out.println("prepared." + t + ".count=" + r.getLong(2));
					}
					// The session stays on that server for later statements.
					try (Statement s = c.createStatement();
							ResultSet r = s.executeQuery("SELECT inet_server_port()")) {
						r.next();
						System.out.println("prepared." + t + ".port2=" + r.getInt(1));
					}
				}
				try (Connection c = open(url, user, password); Statement s = c.createStatement()) {
					s.execute("SET app.tenant_id = '" + t.replace("'", "''") + "'");
					try (ResultSet r = s.executeQuery(
							"SELECT inet_server_port(), current_setting('app.tenant_id')")) {
						r.next();
						System.out.println("set." + t + ".port=" + r.getInt(1));
						System.out.println("set." + t + ".tenant=" + r.getString(2));
					}
				}
			}
		} catch (SQLException e) {
			System.out.println("sqlstate=" + e.getSQLState() + " message=" + e.getMessage());
			System.exit(2);
		}
	}
}
